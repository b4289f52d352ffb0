//! The narrow handles services see each other through, implemented here at the edge by
//! the service that holds the state. A service declares what it needs of another as a
//! trait in its own folder (`session::SessionAgents`); neither imports the other, and the
//! import graph keeps one direction (`cargo xtask layers`).

use std::path::Path;

use crate::core::Caller;
use crate::services::agent::{AgentAdmission, AgentError, AgentManager};
use crate::services::coordination::{AgentView, Coordination, CoordinationAgents};
use crate::services::session::{Pending, SessionAgents, SessionError};

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
