//! Risk gating's answers as text: `rush explain`, the verdict line of `rush execute`, and
//! `rush guardrail list`.

use rush_proto::gate::{Assessment, Guardrail};

use super::{Table, sanitize, shell_join};
use crate::time::format_unix_ms;

/// One line: the decision and why.
pub fn verdict_line(a: &Assessment) -> String {
    format!("{} (score {}, trust {}): {}", a.decision, a.score, sanitize(&a.trust), sanitize(&a.reason))
}

/// `rush explain`: every command of the tree (how it is reached), every tag with the rule
/// that fired, the score, and the decision.
pub fn assessment(a: &Assessment) -> String {
    let mut out = format!("command:   {}\n", sanitize(&a.command));
    if a.pattern != a.command {
        out.push_str(&format!("pattern:   {}\n", sanitize(&a.pattern)));
    }
    out.push_str(&format!("cwd:       {}\n", sanitize(&a.cwd.display().to_string())));
    if let Some(w) = &a.workspace {
        out.push_str(&format!("workspace: {}\n", sanitize(&w.display().to_string())));
    }
    out.push_str(&format!("trust:     {}\n", sanitize(&a.trust)));
    if a.commands.is_empty() {
        out.push_str("commands:  (none found)\n");
    } else {
        out.push_str("commands:\n");
        for (i, c) in a.commands.iter().enumerate() {
            let mut line = format!("  [{i}] {}", shell_join(&c.argv));
            if !c.via.is_empty() {
                line.push_str(&format!("   via {}", sanitize(&c.via.join(" > "))));
            }
            if let Some(p) = &c.path {
                line.push_str(&format!("   program {}", sanitize(p)));
            }
            if !c.writes.is_empty() {
                line.push_str(&format!("   writes {}", sanitize(&c.writes.join(", "))));
            }
            if c.dynamic {
                line.push_str("   (known only when it runs)");
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    if a.tags.is_empty() {
        out.push_str("tags:      none\n");
    } else {
        out.push_str("tags:\n");
        let mut t = Table::new(&["TAG", "WEIGHT", "FLOOR", "RULE", "ON", "WHY"]);
        for h in &a.tags {
            t.row(vec![
                sanitize(&h.tag),
                h.weight.to_string(),
                h.floor.map_or_else(|| "-".to_owned(), |f| f.to_string()),
                sanitize(&h.rule),
                h.command.map_or_else(|| "tree".to_owned(), |i| format!("[{i}]")),
                sanitize(&h.why),
            ]);
        }
        for line in t.render().lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&format!("score:     {} ({} at trust {})\n", a.score, a.score_decision, sanitize(&a.trust)));
    if let Some(g) = a.guardrail {
        out.push_str(&format!("guardrail: {g} (rush guardrail list)\n"));
    }
    out.push_str(&format!("decision:  {} (by {}): {}\n", a.decision, a.decided_by, sanitize(&a.reason)));
    out
}

/// `rush guardrail list`.
pub fn guardrails(list: &[Guardrail]) -> String {
    if list.is_empty() {
        return "no guardrails (they are learned from rollbacks, rejections, denial storms and \
                `rush approve|reject --always|--always-ask|--never`, or imported)\n"
            .to_owned();
    }
    let mut t = Table::new(&["ID", "DECISION", "SCOPE", "SOURCE", "LEARNED", "BY", "PATTERN", "BECAUSE"]);
    for g in list {
        t.row(vec![
            g.id.to_string(),
            g.decision.to_string(),
            sanitize(&g.scope.to_string()),
            g.source.to_string(),
            format_unix_ms(g.created_unix_ms),
            sanitize(&g.learned_by),
            sanitize(&g.pattern),
            sanitize(&g.because),
        ]);
    }
    t.render()
}
