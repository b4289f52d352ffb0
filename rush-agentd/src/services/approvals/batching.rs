//! Which requests are one item for a person: the batch key (kind + normalised target),
//! the similarity of near-duplicates, and the grouping of pending requests into batches.
//! Pure functions of the requests and the settings: the same queue groups the same way
//! every time, so `rush approve --batch KEY` answers what `rush approvals` showed.

use std::collections::BTreeSet;
use std::path::Path;

use rush_proto::approval::{Approval, ApprovalDetail, ApprovalKind};

/// The batch key: `KIND:TARGET`, where the target is normalised so that requests for the
/// same thing compare equal:
/// - capability: `capability:OPS:DIR`, DIR the requested path if it is a directory when
///   asked, else its parent directory (the subtree the request is in), OPS as `read,write`;
/// - command: `command:PROGRAM ARG1`: the program's basename and the first argument that
///   is not an option (`git push`, `npm install`, `rm`);
/// - budget: `budget:RESOURCES`: the resources raised, sorted (`budget:cpu,mem`);
/// - custom: `custom:ACTION`: the action lower-cased, whitespace collapsed.
pub fn batch_key(detail: &ApprovalDetail, action: &str) -> String {
    match detail {
        ApprovalDetail::Capability { path, ops } => {
            // A directory asked for is its own subtree; a file belongs to its directory's.
            let dir = if path.is_dir() { path.as_path() } else { path.parent().unwrap_or(Path::new("/")) };
            format!("capability:{ops}:{}", dir.display())
        }
        ApprovalDetail::Command { argv, .. } => {
            let program = argv.first().map_or("", |p| p.rsplit('/').next().unwrap_or(p));
            match argv.iter().skip(1).find(|a| !a.starts_with('-')) {
                Some(arg) => format!("command:{program} {arg}"),
                None => format!("command:{program}"),
            }
        }
        ApprovalDetail::Budget { raise } => {
            let mut names: Vec<&str> = Vec::new();
            let b = raise;
            for (set, name) in [
                (b.cpu_ms.is_some(), "cpu"),
                (b.cpu_rate_pct.is_some(), "cpu_rate"),
                (b.mem_bytes.is_some(), "mem"),
                (b.pids.is_some(), "pids"),
                (b.net_bytes.is_some(), "net"),
                (b.api_calls.is_some(), "api"),
                (b.cost_micro_usd.is_some(), "cost"),
            ] {
                if set {
                    names.push(name);
                }
            }
            format!("budget:{}", names.join(","))
        }
        ApprovalDetail::Custom { .. } => format!("custom:{}", normalise(action)),
    }
}

/// Lower case, runs of whitespace as one space, trimmed.
fn normalise(text: &str) -> String {
    text.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>().join(" ")
}

/// The normalised tokens similarity compares: the action's words and the detail's
/// (path components, argv, raised resources), lower-cased, split on anything that is not
/// a letter or digit.
pub fn tokens(approval: &Approval) -> BTreeSet<String> {
    let mut text = approval.action.clone();
    match &approval.detail {
        ApprovalDetail::Capability { path, ops } => {
            text.push(' ');
            text.push_str(&path.to_string_lossy());
            text.push(' ');
            text.push_str(&ops.to_string());
        }
        ApprovalDetail::Command { argv, .. } => {
            for a in argv {
                text.push(' ');
                text.push_str(a);
            }
        }
        ApprovalDetail::Budget { .. } => {
            text.push(' ');
            text.push_str(&batch_key(&approval.detail, ""));
        }
        ApprovalDetail::Custom { text: t } => {
            text.push(' ');
            text.push_str(t);
        }
    }
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// |A ∩ B| / |A ∪ B|; two empty sets are identical (1.0).
pub fn jaccard(a: &BTreeSet<String>, b: &BTreeSet<String>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

/// One group of pending requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The first request's batch key.
    pub key: String,
    /// Indexes into the list grouped, in its order; the first is the leader.
    pub members: Vec<usize>,
}

/// Groups `requests` (in id order): each joins the first group whose leader is of its kind,
/// arrived at most `window_ms(leader)` before it, and has its batch key or a similarity
/// of at least `similarity` with it; otherwise it leads a new group.
pub fn group(requests: &[Approval], window_ms: impl Fn(&Approval) -> u64, similarity: f64) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut leader_tokens: Vec<BTreeSet<String>> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let mine = tokens(r);
        let home = groups.iter().enumerate().position(|(gi, g)| {
            let leader = &requests[g.members[0]];
            leader.kind() == r.kind()
                && r.created_unix_ms.saturating_sub(leader.created_unix_ms) <= window_ms(leader)
                && (leader.batch_key == r.batch_key
                    || (similarity_applies(r.kind()) && jaccard(&leader_tokens[gi], &mine) >= similarity))
        });
        match home {
            Some(g) => groups[g].members.push(i),
            None => {
                groups.push(Group { key: r.batch_key.clone(), members: vec![i] });
                leader_tokens.push(mine);
            }
        }
    }
    groups
}

/// What batching saves on a trace: requests in, items a person decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Savings {
    pub requests: usize,
    pub decisions: usize,
}

/// Replays `trace` (in arrival order) through the grouping, as the queue would with
/// every request pending until its group is decided: how many decisions it takes.
pub fn replay(trace: &[Approval], window_ms: u64, similarity: f64) -> Savings {
    let groups = group(trace, |_| window_ms, similarity);
    Savings { requests: trace.len(), decisions: groups.len() }
}

/// Whether near-duplicates of this kind batch by similarity. Commands batch only by their
/// exact key, never by similarity: `rm -rf a` and `rm -rf b` are different decisions.
pub fn similarity_applies(kind: ApprovalKind) -> bool {
    kind != ApprovalKind::Command
}

#[cfg(test)]
mod tests {
    use super::*;
    use rush_proto::approval::*;

    pub fn request(id: u64, created: u64, action: &str, detail: ApprovalDetail) -> Approval {
        let batch_key = batch_key(&detail, action);
        Approval {
            id,
            agent: format!("a{id}"),
            session: None,
            origin: ApprovalOrigin::Agent,
            action: action.into(),
            class: ActionClass::of_kind(detail.kind()),
            detail,
            priority: Priority::Medium,
            effective_priority: Priority::Medium,
            raised_because: None,
            risk_score: None,
            tags: vec![],
            batch_key,
            channel: Channel::Cli { blocking: false },
            created_unix_ms: created,
            deadline_unix_ms: created + 3_600_000,
            on_timeout: OnTimeout::Reject,
            escalated: false,
            freeze: false,
            delivered_unix_ms: None,
            state: ApprovalState::Pending,
            decision: None,
        }
    }

    fn cap(path: &str) -> ApprovalDetail {
        ApprovalDetail::Capability { path: path.into(), ops: "write".parse().unwrap() }
    }

    #[test]
    fn keys_normalise_the_target() {
        assert_eq!(batch_key(&cap("/w/migrations/001.sql"), ""), "capability:write:/w/migrations");
        let cmd = |argv: &[&str]| ApprovalDetail::Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cwd: None,
        };
        assert_eq!(
            batch_key(&cmd(&["/usr/bin/git", "--no-pager", "push", "origin"]), ""),
            "command:git push"
        );
        assert_eq!(batch_key(&cmd(&["ls"]), ""), "command:ls");
        let raise = Budget { mem_bytes: Some(1), cpu_ms: Some(1), ..Default::default() };
        assert_eq!(batch_key(&ApprovalDetail::Budget { raise }, ""), "budget:cpu,mem");
        assert_eq!(
            batch_key(&ApprovalDetail::Custom { text: "".into() }, "  Deploy   TO prod "),
            "custom:deploy to prod"
        );
    }

    use rush_proto::Budget;

    #[test]
    fn same_key_within_the_window_is_one_batch_and_later_is_another() {
        let reqs = vec![
            request(1, 0, "write migrations", cap("/w/migrations/1.sql")),
            request(2, 1_000, "write migrations", cap("/w/migrations/2.sql")),
            request(3, 2_000, "write src", cap("/w/src/x.rs")),
            request(4, 400_000, "write migrations", cap("/w/migrations/3.sql")),
        ];
        let g = group(&reqs, |_| 300_000, 1.1);
        assert_eq!(g.len(), 3);
        assert_eq!(g[0].members, vec![0, 1]);
        assert_eq!(g[1].members, vec![2]);
        assert_eq!(g[2].members, vec![3]);
    }

    #[test]
    fn near_duplicates_join_by_similarity_and_distinct_ones_do_not() {
        let custom = |t: &str| ApprovalDetail::Custom { text: t.into() };
        let reqs = vec![
            request(1, 0, "deploy the api service to staging now", custom("")),
            request(2, 0, "deploy the api service to staging", custom("")),
            request(3, 0, "drop the production database", custom("")),
        ];
        let g = group(&reqs, |_| 60_000, 0.8);
        assert_eq!(g.iter().map(|g| g.members.clone()).collect::<Vec<_>>(), vec![vec![0, 1], vec![2]]);
        // Same input, same grouping.
        assert_eq!(group(&reqs, |_| 60_000, 0.8), g);
        let j = jaccard(&tokens(&reqs[0]), &tokens(&reqs[1]));
        assert!((j - 6.0 / 7.0).abs() < 1e-9, "{j}");
    }

    #[test]
    fn a_replayed_trace_counts_decisions_saved() {
        let reqs: Vec<Approval> = (0..10)
            .map(|i| request(i, i * 100, "write migrations", cap(&format!("/w/migrations/{i}.sql"))))
            .collect();
        assert_eq!(replay(&reqs, 60_000, 0.8), Savings { requests: 10, decisions: 1 });
        // A zero window: only requests made in the same millisecond batch.
        assert_eq!(replay(&reqs, 0, 2.0), Savings { requests: 10, decisions: 10 });
    }

    #[test]
    fn commands_batch_by_key_never_by_similarity() {
        let cmd = |argv: &[&str]| ApprovalDetail::Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cwd: None,
        };
        let reqs = vec![
            request(1, 0, "rm -rf build", cmd(&["rm", "-rf", "build"])),
            request(2, 0, "rm -rf build", cmd(&["rm", "-rf", "src"])),
        ];
        assert_eq!(reqs[0].batch_key, "command:rm build");
        assert_eq!(group(&reqs, |_| 60_000, 0.1).len(), 2);
    }
}
