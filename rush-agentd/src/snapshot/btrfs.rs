//! STUB (lead's local build only; replaced by the helper's branch)
use super::*;
use std::path::{Path, PathBuf};
pub struct Btrfs {
    root: PathBuf,
}
impl Btrfs {
    pub fn on_host(root: &Path) -> Result<Btrfs, SnapshotError> {
        Ok(Btrfs { root: root.into() })
    }
    pub fn on_loop(_i: &Path, m: &Path, _s: u64) -> Result<Btrfs, SnapshotError> {
        Ok(Btrfs { root: m.into() })
    }
}
impl Backend for Btrfs {
    fn kind(&self) -> BackendKind {
        BackendKind::Btrfs
    }
    fn root(&self) -> &Path {
        &self.root
    }
    fn create_tree(&self, _: &Path) -> Result<(), SnapshotError> {
        todo!()
    }
    fn clone_tree(&self, _: &Path, _: &Path) -> Result<(), SnapshotError> {
        todo!()
    }
    fn remove_tree(&self, _: &Path) -> Result<(), SnapshotError> {
        todo!()
    }
    fn checkpoint(&self, _: &Path, _: &Path, _: &str) -> Result<Option<u64>, SnapshotError> {
        todo!()
    }
    fn materialize(&self, _: &Path, _: &str, _: &Path) -> Result<(), SnapshotError> {
        todo!()
    }
    fn remove_checkpoint(&self, _: &Path, _: &str) -> Result<(), SnapshotError> {
        todo!()
    }
    fn diff(&self, _: &Path, _: Side<'_>, _: Side<'_>) -> Result<Vec<Change>, SnapshotError> {
        todo!()
    }
    fn usage(&self) -> Result<StoreUsage, SnapshotError> {
        todo!()
    }
}
