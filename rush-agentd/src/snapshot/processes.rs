//! STUB (lead's local build only)
use crate::agent::AgentManager;
use rush_proto::{ApiError, ErrorKind};
use std::path::Path;
impl AgentManager {
    pub async fn dump_processes(&self, _a: &str, _d: &Path) -> Result<(), ApiError> {
        Err(ApiError::new(ErrorKind::Unsupported, "stub"))
    }
    pub async fn restore_processes(&self, _a: &str, _d: &Path) -> Result<(), ApiError> {
        Err(ApiError::new(ErrorKind::Unsupported, "stub"))
    }
}
