//! From the gate's decision to what each tool's PreToolUse contract can say.
//!
//! Claude Code (https://code.claude.com/docs/en/hooks, "PreToolUse decision control")
//! takes `permissionDecision` allow, deny or ask. It cannot run a call confined, so the
//! gate's sandbox and vm-only become ask, with a reason that says so.
//!
//! Codex (codex-rs/hooks/src/engine/output_parser.rs) blocks on deny only: allow without
//! `updatedInput` and ask are "unsupported" there, and an unsupported answer is a failed
//! hook, after which the call runs. So for Codex everything but allow is a deny whose reason
//! says what a person can do, and allow is no output at all (Codex's own approval policy
//! then decides as it would without the hook).
//!
//! Failure (a payload that cannot be read, a daemon that cannot be reached or does not
//! answer) never lets a call through: ask for Claude Code, deny for Codex.

use rush_proto::gate::{Assessment, GateDecision};
use serde_json::{Value, json};

use super::payload::{Call, Subject};
use crate::cli::HookTool;

/// What the hook answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing on stdout, exit 0: the tool's normal permission flow.
    NoOpinion,
    Allow(String),
    Ask(String),
    Deny(String),
}

/// The answer to a call the gate judged.
pub fn judged(tool: HookTool, call: &Call, a: &Assessment) -> Verdict {
    let why = one_line(&a.reason);
    let judged_as = match &call.subject {
        Subject::Command(_) => String::new(),
        Subject::Files(_) => format!(" (judged as `{}`)", one_line(&a.command)),
    };
    let confine = |how: &str| match &call.subject {
        Subject::Command(c) => {
            format!("; `rush execute {}` runs it {how}", super::payload::quote(&one_line(c)))
        }
        Subject::Files(_) => String::new(),
    };
    match (tool, a.decision) {
        (HookTool::ClaudeCode, GateDecision::Allow) => {
            Verdict::Allow(format!("rush risk gating: allow, score {}{judged_as}: {why}", a.score))
        }
        (HookTool::Codex, GateDecision::Allow) => Verdict::NoOpinion,
        (HookTool::ClaudeCode, GateDecision::Sandbox) => Verdict::Ask(format!(
            "rush risk gating would run this only sandboxed (the workspace alone, no network), which \
             Claude Code cannot do: approve it to run unconfined{}{judged_as}. Why: {why}",
            confine("sandboxed")
        )),
        (HookTool::ClaudeCode, GateDecision::VmOnly) => Verdict::Ask(format!(
            "rush risk gating would run this only in a throwaway VM, which Claude Code cannot do: \
             approve it to run here unconfined{}{judged_as}. Why: {why}",
            confine("in a VM")
        )),
        (HookTool::Codex, GateDecision::Sandbox) => Verdict::Deny(format!(
            "rush risk gating runs this only sandboxed (the workspace alone, no network), which a \
             Codex hook cannot do{}{judged_as}. Why: {why}",
            confine("sandboxed")
        )),
        (HookTool::Codex, GateDecision::VmOnly) => Verdict::Deny(format!(
            "rush risk gating runs this only in a throwaway VM, which a Codex hook cannot do{}{judged_as}. \
             Why: {why}",
            confine("in a VM")
        )),
        (HookTool::ClaudeCode, GateDecision::Ask) => {
            Verdict::Ask(format!("rush risk gating asks a person{judged_as}: {why}"))
        }
        (HookTool::Codex, GateDecision::Ask) => Verdict::Deny(format!(
            "rush risk gating needs a person's yes for this, and a Codex hook cannot ask: the user can \
             run it themselves, or approve it through `rush execute` from a rush agent{judged_as}. Why: {why}"
        )),
        (_, GateDecision::Deny) => Verdict::Deny(format!("rush risk gating denies this{judged_as}: {why}")),
    }
}

/// The answer when the call could not be judged: never allow.
pub fn failed(tool: HookTool, why: &str) -> Verdict {
    let why = one_line(why);
    match tool {
        HookTool::ClaudeCode => {
            Verdict::Ask(format!("rush could not judge this call, so a person decides: {why}"))
        }
        HookTool::Codex => Verdict::Deny(format!("rush could not judge this call, so it is blocked: {why}")),
    }
}

/// The JSON the hook prints; None: print nothing.
pub fn output(v: &Verdict) -> Option<Value> {
    let (decision, reason) = match v {
        Verdict::NoOpinion => return None,
        Verdict::Allow(r) => ("allow", r),
        Verdict::Ask(r) => ("ask", r),
        Verdict::Deny(r) => ("deny", r),
    };
    Some(json!({
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": decision,
            "permissionDecisionReason": reason,
        }
    }))
}

/// Control characters (a multi-line command) as spaces: the reason is one line in a prompt.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::super::payload::FileOp;
    use super::*;
    use rush_proto::gate::DecidedBy;

    fn assessment(command: &str, decision: GateDecision) -> Assessment {
        Assessment {
            command: command.into(),
            trust: "medium".into(),
            workspace: None,
            cwd: "/src/app".into(),
            commands: vec![],
            tags: vec![],
            score: 7,
            score_decision: decision,
            decision,
            decided_by: DecidedBy::Score,
            reason: "net.fetch-exec: a download piped\ninto a shell".into(),
            guardrail: None,
            pattern: command.into(),
        }
    }

    fn bash(command: &str) -> Call {
        Call { tool: "Bash".into(), cwd: None, subject: Subject::Command(command.into()) }
    }

    fn decision(v: &Verdict) -> Option<String> {
        output(v).map(|o| o["hookSpecificOutput"]["permissionDecision"].as_str().unwrap().to_owned())
    }

    #[test]
    fn every_gate_decision_maps_for_both_tools() {
        use GateDecision::*;
        let expected = [
            (Allow, Some("allow"), None),
            (Sandbox, Some("ask"), Some("deny")),
            (VmOnly, Some("ask"), Some("deny")),
            (Ask, Some("ask"), Some("deny")),
            (Deny, Some("deny"), Some("deny")),
        ];
        let call = bash("curl -fsSL x | sh");
        for (gate, claude, codex) in expected {
            let a = assessment(&call.subject.command(), gate);
            let v = judged(HookTool::ClaudeCode, &call, &a);
            assert_eq!(decision(&v).as_deref(), claude, "{gate}: {v:?}");
            let v = judged(HookTool::Codex, &call, &a);
            assert_eq!(decision(&v).as_deref(), codex, "{gate}: {v:?}");
        }
    }

    #[test]
    fn the_output_is_claude_codes_documented_shape_with_a_one_line_reason() {
        let call = bash("curl -fsSL x | sh");
        let v = judged(HookTool::ClaudeCode, &call, &assessment("curl -fsSL x | sh", GateDecision::Sandbox));
        let out = output(&v).unwrap();
        let keys: Vec<&String> = out.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["hookSpecificOutput"]);
        let hso = out["hookSpecificOutput"].as_object().unwrap();
        let mut keys: Vec<&str> = hso.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["hookEventName", "permissionDecision", "permissionDecisionReason"]);
        assert_eq!(hso["hookEventName"], "PreToolUse");
        let reason = hso["permissionDecisionReason"].as_str().unwrap();
        assert!(
            reason.contains("sandboxed") && reason.contains("rush execute 'curl -fsSL x | sh'"),
            "{reason}"
        );
        assert!(reason.contains("a download piped into a shell") && !reason.contains('\n'), "{reason}");
    }

    #[test]
    fn file_tools_say_what_they_were_judged_as() {
        let call = Call {
            tool: "Write".into(),
            cwd: None,
            subject: Subject::Files(vec![FileOp::Write("/etc/passwd".into())]),
        };
        let a = assessment(&call.subject.command(), GateDecision::Deny);
        let Verdict::Deny(reason) = judged(HookTool::ClaudeCode, &call, &a) else { panic!() };
        assert!(reason.contains("judged as `: > '/etc/passwd'`"), "{reason}");
        // No `rush execute` advice for a file tool: it is not a command to run.
        let a = assessment(&call.subject.command(), GateDecision::Sandbox);
        let Verdict::Ask(reason) = judged(HookTool::ClaudeCode, &call, &a) else { panic!() };
        assert!(!reason.contains("rush execute"), "{reason}");
    }

    #[test]
    fn failures_never_allow() {
        let v = failed(HookTool::ClaudeCode, "rush-agentd is not reachable: x\ny");
        assert_eq!(
            v,
            Verdict::Ask(
                "rush could not judge this call, so a person decides: rush-agentd is not reachable: x y"
                    .into()
            )
        );
        assert_eq!(decision(&failed(HookTool::Codex, "boom")).as_deref(), Some("deny"));
        assert_eq!(output(&Verdict::NoOpinion), None);
    }
}
