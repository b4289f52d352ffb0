//! The narrow handles services see each other through, implemented here at the edge by
//! the service that holds the state. A service declares what it needs of another as a
//! trait in its own folder (`session::SessionAgents`); neither imports the other, and the
//! import graph keeps one direction (`cargo xtask layers`).

use std::path::Path;

use crate::core::Caller;
use crate::services::agent::{AgentAdmission, AgentError, AgentManager};
use crate::services::approvals::{AgentFacts, ApprovalAgents, ClaimWaits};
use crate::services::coordination::{AgentView, Coordination, CoordinationAgents};
use crate::services::gating::{AgentContext, GatingContext};
use crate::services::session::{Pending, SessionAgents, SessionError};
use crate::services::workspaces::{BoxFuture, TestRun, WorkspaceContext};

/// An agents' failure inside a session request keeps its fault and its line.
fn for_session(e: AgentError) -> SessionError {
    SessionError::new(e.fault, e.message)
}

impl SessionAgents for AgentManager {
    fn in_session(&self, session: &str) -> Vec<String> {
        AgentManager::in_session(self, session)
    }

    fn freeze<'a>(&'a self, name: &'a str) -> Pending<'a, ()> {
        Box::pin(async move { AgentManager::freeze(self, name).await.map_err(for_session) })
    }

    fn thaw(&self, name: &str) -> Result<(), SessionError> {
        AgentManager::thaw(self, name).map_err(for_session)
    }

    fn kill<'a>(&'a self, name: &'a str, caller: &'a Caller) -> Pending<'a, u32> {
        Box::pin(async move { AgentManager::kill(self, name, caller).await.map_err(for_session) })
    }

    fn processes_supported(&self) -> Result<(), SessionError> {
        crate::services::agent::processes::criu(self.criu()).map(|_| ()).map_err(for_session)
    }

    fn dump_processes<'a>(&'a self, name: &'a str, images: &'a Path) -> Pending<'a, ()> {
        Box::pin(async move {
            AgentManager::dump_processes(self, name, images).await.map(|_| ()).map_err(for_session)
        })
    }

    fn restore_processes<'a>(&'a self, name: &'a str, images: &'a Path) -> Pending<'a, ()> {
        Box::pin(async move {
            AgentManager::restore_processes(self, name, images).await.map(|_| ()).map_err(for_session)
        })
    }

    fn follow_token_paths(&self, name: &str) -> Result<usize, SessionError> {
        AgentManager::follow_token_paths(self, name).map_err(for_session)
    }
}

impl CoordinationAgents for AgentManager {
    fn agent(&self, name: &str) -> Option<AgentView> {
        self.registry().agents.get(name).map(|a| view(a.info.clone()))
    }

    fn alive(&self) -> Vec<AgentView> {
        self.infos().into_iter().map(view).filter(|a| a.alive).collect()
    }
}

fn view(a: rush_proto::AgentInfo) -> AgentView {
    AgentView {
        alive: a.state != rush_proto::AgentState::Exited,
        name: a.name,
        cgroup_id: a.cgroup_id,
        session: a.session,
    }
}

impl AgentAdmission for Coordination {
    fn admit(&self, name: &str, cgroup_id: u64, session: Option<&str>) -> Result<(), String> {
        Coordination::admit(self, name, cgroup_id, session).map_err(|e| e.message)
    }
}

/// The agents as the approvals queue drives them: grants and budget raises go through the
/// same calls as the CLI's (`grant` needs the `Arc`), made as the approver's uid.
pub struct AgentsForApprovals(pub std::sync::Arc<AgentManager>);

fn as_uid(uid: u32) -> Caller {
    Caller { uid, gid: 0, pid: 0, groups: Vec::new() }
}

impl ApprovalAgents for AgentsForApprovals {
    fn agent(&self, name: &str) -> Option<AgentFacts> {
        self.0.registry().agents.get(name).map(|a| AgentFacts {
            session: a.info.session.clone(),
            trust: a.info.trust.clone(),
            alive: a.info.state != rush_proto::AgentState::Exited,
        })
    }

    fn grantable(&self, path: &Path) -> Result<(), String> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!(
                "{}: {e} (a token names an existing file or directory: to make new files, ask for their \
                 directory with create)",
                path.display()
            )),
        }
    }

    fn grant<'a>(
        &'a self,
        agent: &'a str,
        path: &'a Path,
        ops: rush_proto::Ops,
        ttl_secs: u64,
        uid: u32,
    ) -> crate::services::approvals::Pending<'a, String> {
        Box::pin(async move {
            let req = rush_proto::GrantRequest {
                agent: agent.to_owned(),
                path: path.to_owned(),
                ops,
                duration_secs: Some(ttl_secs),
                condition: None,
            };
            let (token, effect) = self.0.grant(req, &as_uid(uid)).await.map_err(|e| e.message)?;
            let mut line = format!(
                "token {} granted: {} on {} for {}",
                token.id,
                token.ops,
                token.path.display(),
                rush_proto::budget::format_cpu_ms(ttl_secs * 1000)
            );
            if let Some(e) = effect {
                line.push_str(&format!(" ({})", e.detail));
            }
            Ok(line)
        })
    }

    fn raise_budget<'a>(
        &'a self,
        agent: &'a str,
        raise: rush_proto::Budget,
        uid: u32,
    ) -> crate::services::approvals::Pending<'a, String> {
        Box::pin(async move {
            let info = self.0.resume(agent, Some(raise), &as_uid(uid)).await.map_err(|e| e.message)?;
            Ok(format!("budget now {}, agent running", info.budget))
        })
    }

    fn hold<'a>(&'a self, agent: &'a str) -> crate::services::approvals::Pending<'a, ()> {
        Box::pin(async move { self.0.hold_for_approval(agent).await.map_err(|e| e.message) })
    }

    fn release_hold(&self, agent: &str) -> Result<(), String> {
        self.0.release_approval_hold(agent).map_err(|e| e.message)
    }
}

impl ClaimWaits for Coordination {
    fn contended_claim(&self, agent: &str) -> Option<String> {
        Coordination::contended_claim(self, agent)
    }
}

/// The agents and sessions as risk gating judges a command in them: an agent's trust,
/// live tokens and session; a session's workspace.
pub struct ContextForGating {
    pub agents: std::sync::Arc<AgentManager>,
    pub sessions: std::sync::Arc<crate::services::session::Sessions>,
}

impl GatingContext for ContextForGating {
    fn agent(&self, name: &str) -> Option<AgentContext> {
        let (session, trust) = {
            let reg = self.agents.registry();
            let a = reg.agents.get(name)?;
            (a.info.session.clone(), a.info.trust.clone())
        };
        let tokens = self
            .agents
            .capabilities(Some(name))
            .unwrap_or_default()
            .into_iter()
            .filter(|t| !t.expired)
            .map(|t| rush_gate::Token { path: t.path, ops: t.ops })
            .collect();
        Some(AgentContext { session, trust, tokens })
    }

    fn workspace(&self, session: &str) -> Option<std::path::PathBuf> {
        let sref = rush_proto::SessionRef { name: Some(session.to_owned()), cwd: None };
        self.sessions.find(&sref).ok().map(|s| s.workspace)
    }

    fn session_at(&self, cwd: &Path) -> Option<(String, std::path::PathBuf)> {
        let sref = rush_proto::SessionRef { name: None, cwd: Some(cwd.to_owned()) };
        self.sessions.find(&sref).ok().map(|s| (s.name, s.workspace))
    }
}

/// What workspaces see of agents and coordination.
pub struct ContextForWorkspaces {
    pub agents: std::sync::Arc<AgentManager>,
    pub coordination: std::sync::Arc<Coordination>,
}

impl WorkspaceContext for ContextForWorkspaces {
    fn agent_state(&self, name: &str) -> Option<rush_proto::AgentState> {
        self.agents.registry().agents.get(name).map(|a| a.info.state)
    }

    fn claimed(
        &self,
        paths: &[std::path::PathBuf],
        except: &str,
    ) -> Vec<(std::path::PathBuf, String, String)> {
        let claims = self
            .coordination
            .claims(crate::services::coordination::Actor::Operator { uid: 0 }, None, None)
            .unwrap_or_default();
        let mut out = Vec::new();
        for c in claims.iter().filter(|c| c.agent != except) {
            if let Some(p) = paths.iter().find(|p| crate::services::coordination::covers(c, p)) {
                out.push((p.clone(), c.agent.clone(), c.task.clone()));
            }
        }
        out
    }

    fn run_test<'a>(&'a self, test: TestRun<'a>) -> BoxFuture<'a, Result<i32, String>> {
        Box::pin(async move {
            self.agents
                .run_check(&test.name, test.command, test.dir, test.grants, test.uid, test.timeout)
                .await
        })
    }
}
