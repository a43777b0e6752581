//! Requests still arriving, charged to the node's request memory as their
//! bytes come in, and given [`ARRIVAL_TIMEOUT`] to arrive whole: a WebSocket
//! frame is buffered whole before the node sees it, and without a charge 250
//! connections each stalled short of a 16 MiB frame held 3.7 GB that
//! nothing counted.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use weft_proto::WeftError;
use weft_runtime::budget::Charge;

use crate::executor::RequestMemory;

/// What a connection may have read past its last whole request without a
/// charge: small requests never touch the budget (and so are refused, when
/// there is no room, with their `u`, once whole). Not much more than the
/// buffers every connection has (about 40 KB): uncharged, 2,000 connections
/// each 64 KB into a request held 104 KB apiece.
const FREE: usize = 16 << 10;

/// How long a request may take to arrive, from its first byte (a WebSocket
/// message) or from its headers (an HTTP body), so that a client that stops
/// sending cannot hold its bytes and their charge.
pub(crate) const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(30);

/// The bytes of one request that has not arrived whole yet.
pub(crate) struct Arriving {
    memory: RequestMemory,
    unread: usize,
    charge: Option<Charge>,
}

impl Arriving {
    pub(crate) fn new(memory: RequestMemory) -> Self {
        Self { memory, unread: 0, charge: None }
    }

    /// `n` more bytes came in; past [`FREE`] they are all charged, and a
    /// request that finds no room is refused.
    pub(crate) fn arrived(&mut self, n: usize) -> Result<(), WeftError> {
        self.unread = self.unread.saturating_add(n);
        if self.unread <= FREE {
            return Ok(());
        }
        let charged = match &mut self.charge {
            Some(charge) => charge.grow_to(self.unread),
            None => {
                self.charge = self.memory.budget().charge(self.unread);
                self.charge.is_some()
            }
        };
        if charged { Ok(()) } else { Err(self.memory.no_room("this one, still arriving, takes", self.unread)) }
    }

    /// The request arrived whole: from here its charge is the one it takes
    /// as it is parsed and held.
    pub(crate) fn delivered(&mut self) {
        self.unread = 0;
        self.charge = None;
    }

    /// A control frame of `n` bytes with the shortest header was taken
    /// off; true when nothing is left arriving. Its header may have been
    /// up to 8 bytes longer (a length written in 64 bits), so that few are
    /// taken for it too.
    fn took(&mut self, n: usize) -> bool {
        self.unread = self.unread.saturating_sub(n);
        if self.unread <= 8 {
            self.unread = 0;
        }
        if let Some(charge) = &mut self.charge {
            charge.shrink_to(self.unread);
        }
        self.unread == 0
    }
}

/// A connection whose reads are charged to an [`Arriving`] shared with
/// whoever takes whole requests off it. A read that finds no room, or that
/// comes [`ARRIVAL_TIMEOUT`] after the first byte of a message still
/// arriving, fails, and why is kept for [`MeterHandle::refusal`].
pub(crate) struct Metered<S> {
    inner: S,
    state: Arc<Mutex<Meter>>,
}

/// The charge, kept but no longer grown (`counting` off) while the
/// connection is read out to be dropped: the rest of a refused request
/// (tungstenite still holds what it had read of it), or a refused hello.
struct Meter {
    arriving: Arriving,
    counting: bool,
    /// How long a message may take to arrive ([`ARRIVAL_TIMEOUT`]).
    timeout: Duration,
    /// When the message arriving is too late.
    deadline: Option<Pin<Box<Sleep>>>,
    refused: Option<Refusal>,
}

/// Why a read of a [`Metered`] connection failed.
pub(crate) enum Refusal {
    /// No room in the node's request memory.
    NoRoom(WeftError),
    /// The message did not arrive whole within [`ARRIVAL_TIMEOUT`].
    TooSlow,
}

impl Meter {
    /// Charges a read of `n` bytes, and fails one too late or with no room.
    fn read(&mut self, n: usize, cx: &mut Context<'_>) -> Result<(), Refusal> {
        if !self.counting {
            return Ok(());
        }
        self.arriving.arrived(n).map_err(Refusal::NoRoom)?;
        let timeout = self.timeout;
        let deadline = self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if deadline.as_mut().poll(cx).is_ready() { Err(Refusal::TooSlow) } else { Ok(()) }
    }
}

/// The handle on a [`Metered`] connection's charge.
#[derive(Clone)]
pub(crate) struct MeterHandle(Arc<Mutex<Meter>>);

impl<S> Metered<S> {
    /// `inner`, whose messages have `timeout` each to arrive.
    pub(crate) fn new(inner: S, memory: RequestMemory, timeout: Duration) -> (Self, MeterHandle) {
        let arriving = Arriving::new(memory);
        let state = Arc::new(Mutex::new(Meter { arriving, counting: true, timeout, deadline: None, refused: None }));
        (Self { inner, state: state.clone() }, MeterHandle(state))
    }

    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl MeterHandle {
    fn with<T>(&self, f: impl FnOnce(&mut Meter) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A whole request (or any other whole message) was taken off the
    /// connection.
    pub(crate) fn delivered(&self) {
        self.with(|meter| {
            meter.deadline = None;
            meter.arriving.delivered();
        });
    }

    /// A control frame of `n` bytes was taken off the connection: what
    /// arrives besides it stays charged, and its deadline runs on.
    pub(crate) fn took(&self, n: usize) {
        self.with(|meter| {
            if meter.arriving.took(n) {
                meter.deadline = None;
            }
        });
    }

    /// The charge stays as it is until the connection is dropped: what is
    /// read from here on is read only to be dropped.
    pub(crate) fn freeze(&self) {
        self.with(|meter| meter.counting = false);
    }

    /// Why a read failed, when the meter failed it.
    pub(crate) fn refusal(&self) -> Option<Refusal> {
        self.with(|meter| meter.refused.take())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        // A read that brings nothing still looks at the deadline: it is how
        // a client that stops sending is found out.
        let mut meter = this.state.lock().unwrap_or_else(PoisonError::into_inner);
        if n == 0 && meter.deadline.is_none() {
            return read;
        }
        match meter.read(n, cx) {
            Ok(()) => read,
            Err(refused) => {
                meter.refused = Some(refused);
                Poll::Ready(Err(io::Error::other("a request still arriving was refused")))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use weft_proto::ErrorKind;

    use super::*;

    #[test]
    fn a_request_is_charged_past_the_free_bytes_until_it_arrives_whole() {
        let memory = RequestMemory::new(1 << 20);
        let mut first = Arriving::new(memory.clone());
        first.arrived(FREE).unwrap();
        assert_eq!(memory.budget().used(), 0, "small requests cost the budget nothing");
        first.arrived(1).unwrap();
        assert_eq!(memory.budget().used(), FREE + 1, "then every byte counts");
        first.arrived(600 << 10).unwrap();
        let mut second = Arriving::new(memory.clone());
        let e = second.arrived(600 << 10).unwrap_err();
        assert_eq!(e.kind, ErrorKind::RESOURCE_EXHAUSTED);
        assert!(e.message.contains("limits.max_request_memory") && e.message.contains("retry"), "{}", e.message);
        assert!(!first.took(100), "a control frame taken off leaves the request arriving");
        assert_eq!(memory.budget().used(), FREE + 1 + (600 << 10) - 100);
        first.delivered();
        assert_eq!(memory.budget().used(), 0, "a whole request gives its bytes back");
        second.delivered();
        second.arrived(900 << 10).unwrap();
        assert_eq!(memory.budget().used(), 900 << 10);
    }

    #[tokio::test]
    async fn a_read_fails_once_a_message_stops_arriving_for_its_timeout_but_not_between_messages() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let timeout = Duration::from_millis(200);
        let (mut metered, meter) = Metered::new(server, RequestMemory::new(1 << 20), timeout);
        let mut buf = [0u8; 16];
        let idle = tokio::time::timeout(timeout * 3, metered.read(&mut buf)).await;
        assert!(idle.is_err(), "a connection with nothing arriving waits: {idle:?}");
        // A ping taken off whole leaves nothing arriving.
        client.write_all(b"a ping").await.unwrap();
        assert_eq!(metered.read(&mut buf).await.unwrap(), 6);
        meter.took(6);
        let idle = tokio::time::timeout(timeout * 3, metered.read(&mut buf)).await;
        assert!(idle.is_err(), "a ping leaves no deadline behind: {idle:?}");
        // One between the fragments of a message does not reset its deadline.
        let started = tokio::time::Instant::now();
        client.write_all(b"part of one").await.unwrap();
        assert_eq!(metered.read(&mut buf).await.unwrap(), 11);
        client.write_all(b"a ping").await.unwrap();
        assert_eq!(metered.read(&mut buf).await.unwrap(), 6);
        meter.took(6);
        assert!(metered.read(&mut buf).await.is_err(), "the rest did not come");
        assert!(started.elapsed() >= timeout);
        assert!(matches!(meter.refusal(), Some(Refusal::TooSlow)));
        meter.delivered();
        let idle = tokio::time::timeout(timeout * 3, metered.read(&mut buf)).await;
        assert!(idle.is_err(), "a delivered message leaves no deadline behind: {idle:?}");
    }
}
