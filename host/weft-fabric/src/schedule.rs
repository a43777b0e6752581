//! Readiness scheduling of a plan: each step is released as soon as every step
//! it depends on has completed, with no barrier between levels, so a slow
//! branch never holds back an independent one.
//!
//! Owns only the bookkeeping of which steps wait, run and finished. It does
//! not run steps, keep their results or know about time; the caller drives it
//! with `complete` and decides what a deadline or a failure means.

use crate::plan::{Plan, StepIdx};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    Released,
    Done,
}

#[derive(Clone, Debug)]
pub struct Scheduler {
    names: Vec<String>,
    dependents: Vec<Vec<StepIdx>>,
    /// Dependencies of each step not completed yet.
    waiting_on: Vec<usize>,
    state: Vec<State>,
    done: usize,
}

impl Scheduler {
    pub fn new(plan: &Plan) -> Self {
        let steps = plan.steps();
        let mut dependents = vec![Vec::new(); steps.len()];
        for (i, step) in steps.iter().enumerate() {
            step.deps.iter().for_each(|d| dependents[d.0].push(StepIdx(i)));
        }
        let waiting_on: Vec<usize> = steps.iter().map(|s| s.deps.len()).collect();
        let state = waiting_on.iter().map(|&n| if n == 0 { State::Released } else { State::Waiting }).collect();
        Scheduler { names: steps.iter().map(|s| s.name.clone()).collect(), dependents, waiting_on, state, done: 0 }
    }

    /// The steps without dependencies, which may start at once.
    pub fn initial_ready(&self) -> Vec<StepIdx> {
        (0..self.waiting_on.len()).filter(|&i| self.waiting_on[i] == 0).map(StepIdx).collect()
    }

    /// Records that `step` completed and returns the steps this released, in
    /// request order. Completing a step that was not released, or twice,
    /// changes nothing: a confused caller cannot make a step run early.
    pub fn complete(&mut self, step: StepIdx) -> Vec<StepIdx> {
        if self.state.get(step.0) != Some(&State::Released) {
            return Vec::new();
        }
        self.state[step.0] = State::Done;
        self.done += 1;
        let mut released = Vec::new();
        for &d in &self.dependents[step.0] {
            self.waiting_on[d.0] -= 1;
            if self.waiting_on[d.0] == 0 {
                self.state[d.0] = State::Released;
                released.push(d);
            }
        }
        released
    }

    pub fn is_done(&self) -> bool {
        self.done == self.state.len()
    }

    /// Names of the steps not completed, in request order (for messages such
    /// as a DEADLINE_EXCEEDED saying what was still pending).
    pub fn unfinished(&self) -> Vec<&str> {
        self.names.iter().zip(&self.state).filter(|(_, s)| **s != State::Done).map(|(n, _)| n.as_str()).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use serde_json::{Value, json};
    use weft_proto::{Command, Request};

    use super::*;
    use crate::testing::{catalog, resolve};

    fn plan(cmds: Vec<Command>) -> Plan {
        let cat = catalog();
        Plan::build(&Request::new("t", cmds), |c| resolve(c, &cat)).unwrap()
    }

    fn idx(p: &Plan, names: &[&str]) -> Vec<StepIdx> {
        names.iter().map(|n| p.step_index(n).unwrap()).collect()
    }

    fn diamond() -> Plan {
        plan(vec![
            Command::new("a", "echo", vec![json!("x")]),
            Command::new("b", "concat", vec![json!("a"), json!("1")]),
            Command::new("c", "concat", vec![json!("a"), json!("2")]),
            Command::new("d", "concat", vec![json!("b"), json!("c")]),
        ])
    }

    #[test]
    fn diamond_releases_each_step_when_its_inputs_are_ready() {
        let p = diamond();
        let mut s = Scheduler::new(&p);
        assert_eq!(s.initial_ready(), idx(&p, &["a"]));
        assert_eq!(s.complete(idx(&p, &["a"])[0]), idx(&p, &["b", "c"]));
        assert_eq!(s.complete(idx(&p, &["c"])[0]), [], "d still waits for b");
        assert_eq!(s.unfinished(), ["b", "d"]);
        assert_eq!(s.complete(idx(&p, &["b"])[0]), idx(&p, &["d"]));
        assert!(!s.is_done());
        assert_eq!(s.complete(idx(&p, &["d"])[0]), []);
        assert!(s.is_done());
        assert!(s.unfinished().is_empty());
    }

    #[test]
    fn completing_an_unreleased_or_finished_step_changes_nothing() {
        let p = diamond();
        let mut s = Scheduler::new(&p);
        let [a, b, _, d] = idx(&p, &["a", "b", "c", "d"])[..] else { panic!() };
        assert_eq!(s.complete(d), []);
        assert_eq!(s.complete(b), []);
        assert_eq!(s.complete(StepIdx(99)), []);
        assert_eq!(s.unfinished(), ["a", "b", "c", "d"]);
        assert_eq!(s.complete(a).len(), 2);
        assert_eq!(s.complete(a), [], "a second completion releases nothing");
        assert_eq!(s.unfinished(), ["b", "c", "d"]);
    }

    #[test]
    fn no_level_barrier_a_ready_branch_runs_while_a_sibling_level_is_pending() {
        // a -> b -> c and x -> y: y is released by x alone, whatever a, b, c do.
        let p = plan(vec![
            Command::new("a", "echo", vec![json!("1")]),
            Command::new("b", "echo", vec![json!("a")]),
            Command::new("c", "echo", vec![json!("b")]),
            Command::new("x", "echo", vec![json!("2")]),
            Command::new("y", "echo", vec![json!("x")]),
        ]);
        let mut s = Scheduler::new(&p);
        assert_eq!(s.initial_ready(), idx(&p, &["a", "x"]));
        assert_eq!(s.complete(idx(&p, &["x"])[0]), idx(&p, &["y"]));
        assert_eq!(s.complete(idx(&p, &["y"])[0]), []);
        assert_eq!(s.unfinished(), ["a", "b", "c"]);
    }

    #[test]
    fn wide_fan_out_is_all_ready_at_once_and_deep_chain_one_at_a_time() {
        let wide = plan((0..100).map(|i| Command::new(format!("w{i}"), "echo", vec![json!("v")])).collect());
        assert_eq!(Scheduler::new(&wide).initial_ready().len(), 100);

        let mut cmds = vec![Command::new("s0", "echo", vec![json!("v")])];
        cmds.extend((1..100).map(|i| Command::new(format!("s{i}"), "echo", vec![json!(format!("s{}", i - 1))])));
        let deep = plan(cmds);
        let mut s = Scheduler::new(&deep);
        let mut ready = s.initial_ready();
        for i in 0..100 {
            assert_eq!(ready, [StepIdx(i)]);
            ready = s.complete(StepIdx(i));
        }
        assert!(ready.is_empty() && s.is_done());
    }

    /// One argument of a generated step: a literal or a reference to an
    /// earlier step (in topological order), spelled as `$ref` or MPREG string.
    #[derive(Clone, Debug)]
    enum Arg {
        Lit(String),
        Ref { to: usize, mpreg: bool },
    }

    #[derive(Clone, Debug)]
    struct GenStep {
        concat: bool,
        by_name: bool,
        args: Vec<Arg>,
    }

    /// Steps in topological order (refs point backwards) plus the order the
    /// request lists them in.
    fn arb_dag() -> impl Strategy<Value = (Vec<GenStep>, Vec<usize>)> {
        (1usize..14).prop_flat_map(|n| {
            let steps: Vec<_> = (0..n)
                .map(|i| {
                    // Literals never look like a step name ("s3"), so they stay literal.
                    let lit = "[a-z]{0,3}".prop_map(Arg::Lit);
                    let arg = if i == 0 {
                        lit.boxed()
                    } else {
                        prop_oneof![lit, (0..i, any::<bool>()).prop_map(|(to, mpreg)| Arg::Ref { to, mpreg })].boxed()
                    };
                    (any::<bool>(), any::<bool>(), prop::collection::vec(arg, 2)).prop_map(
                        |(concat, by_name, mut args)| {
                            args.truncate(if concat { 2 } else { 1 });
                            GenStep { concat, by_name, args }
                        },
                    )
                })
                .collect();
            (steps, Just((0..n).collect::<Vec<_>>()).prop_shuffle())
        })
    }

    fn to_request(steps: &[GenStep], order: &[usize]) -> Request {
        let cmds = order
            .iter()
            .map(|&i| {
                let step = &steps[i];
                let values: Vec<Value> = step
                    .args
                    .iter()
                    .map(|a| match a {
                        Arg::Lit(s) => json!(s),
                        Arg::Ref { to, mpreg: true } => json!(format!("s{to}")),
                        Arg::Ref { to, mpreg: false } => json!({"$ref": format!("s{to}")}),
                    })
                    .collect();
                let fun = if step.concat { "concat" } else { "echo/echo" };
                let mut cmd = Command::new(format!("s{i}"), fun, vec![]);
                if step.by_name {
                    let names: &[&str] = if step.concat { &["a", "b"] } else { &["value"] };
                    cmd.kwargs = names.iter().map(|n| n.to_string()).zip(values).collect();
                } else {
                    cmd.args = values;
                }
                cmd
            })
            .collect();
        Request::new("prop", cmds)
    }

    fn naive(steps: &[GenStep], i: usize, memo: &mut HashMap<usize, String>) -> String {
        if let Some(v) = memo.get(&i) {
            return v.clone();
        }
        let v: String = steps[i]
            .args
            .iter()
            .map(|a| match a {
                Arg::Lit(s) => s.clone(),
                Arg::Ref { to, .. } => naive(steps, *to, memo),
            })
            .collect();
        memo.insert(i, v.clone());
        v
    }

    proptest! {
        #[test]
        fn readiness_order_evaluation_equals_naive_recursive_evaluation(
            (steps, order) in arb_dag(),
            choices in prop::collection::vec(any::<usize>(), 1..64),
        ) {
            let cat = catalog();
            let mut plan = Plan::build(&to_request(&steps, &order), |c| resolve(c, &cat)).unwrap();
            for s in plan.steps() {
                let expected = s.deps.iter().map(|d| plan.steps()[d.0].level + 1).max().unwrap_or(0);
                prop_assert_eq!(s.level, expected);
            }

            let mut sched = Scheduler::new(&plan);
            let mut ready = sched.initial_ready();
            let mut results: Vec<Option<Value>> = vec![None; plan.steps().len()];
            let mut turn = 0;
            while !ready.is_empty() {
                let step = ready.swap_remove(choices[turn % choices.len()] % ready.len());
                turn += 1;
                let s = &plan.steps()[step.0];
                prop_assert!(s.deps.iter().all(|d| results[d.0].is_some()), "{} released early", s.name);
                let args = plan.bind(step, &results).unwrap();
                let value: String = args.iter().map(|a| a.as_str().unwrap()).collect();
                results[step.0] = Some(json!(value));
                ready.extend(sched.complete(step));
            }
            prop_assert!(sched.is_done());

            let mut memo = HashMap::new();
            for (i, _) in steps.iter().enumerate() {
                let at = plan.step_index(&format!("s{i}")).unwrap();
                prop_assert_eq!(results[at.0].clone(), Some(json!(naive(&steps, i, &mut memo))));
            }
        }
    }
}
