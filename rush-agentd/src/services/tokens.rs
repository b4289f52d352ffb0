//! Capability tokens: (agent, path, ops, expiry), held here and mirrored into the kernel's
//! `rush_file_grants` map, which the LSM programs check.
//!
//! The kernel keys grants by inode: (device, inode number), the device being the
//! superblock's, or on btrfs the subvolume's; each entry also names the mount the path was
//! resolved in, so a bind mount elsewhere does not carry it. Several tokens of one agent on
//! one inode merge into one map entry that keeps, per operation, the latest expiry, so each
//! token still lapses on its own time in the kernel, with no daemon tick.
//!
//! A token that lets the agent write a single file also gives the file's directory the
//! internal save right (`rush_ebpf::FILE_OP_SAVE`), so editors' write-temp-then-rename
//! saves work; the kernel then moves the grant to the new inode and tells the daemon.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use rush_proto::{FileGrant, Ops, TokenInfo};

use crate::adapters::bpf::FileGrantEntry;
use crate::core::token::{Condition, Origin, Token};
use crate::core::{FileKey, FileKeys, KeyError, boot_time_ns, now_unix_ms};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The path could not be resolved to the inode the kernel programs key.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// A kernel grant-map write: the entry for an inode, or None to delete it.
pub type KernelEntry = (FileKey, Option<FileGrantEntry>);

/// A token about to be created: the path resolved to its inode now.
pub struct NewToken {
    pub path: PathBuf,
    pub key: FileKey,
    pub mnt_id: u32,
    pub save_dir: Option<FileKey>,
    pub ops: Ops,
    pub ttl_secs: Option<u64>,
    pub origin: Origin,
    pub condition: Option<Condition>,
}

impl NewToken {
    pub fn resolve(keys: FileKeys, grant: &FileGrant, origin: Origin) -> Result<NewToken, TokenError> {
        let found = keys.resolve(&grant.path)?;
        // Editors save a file by renaming a new one over it: a write token on a file
        // (from the operator, not the agent's own stdio) lets that happen in its directory.
        let save_dir = match (&origin, found.is_dir, grant.path.parent()) {
            (Origin::Grant | Origin::Spawn, false, Some(dir)) if grant.ops.contains(Ops::WRITE) => {
                Some(keys.resolve(dir)?.key)
            }
            _ => None,
        };
        Ok(NewToken {
            path: grant.path.clone(),
            key: found.key,
            mnt_id: found.mnt_id,
            save_dir,
            ops: grant.ops,
            ttl_secs: grant.ttl_secs,
            origin,
            condition: None,
        })
    }

    /// A conditional token: resolved on the worktree, shown and revoked by the original
    /// path. No save right: the whole worktree is the agent's.
    pub fn conditional(
        keys: FileKeys,
        grant: &FileGrant,
        condition: Condition,
    ) -> Result<NewToken, TokenError> {
        let at = FileGrant { path: condition.worktree.clone(), ops: grant.ops, ttl_secs: grant.ttl_secs };
        let mut token = NewToken::resolve(keys, &at, Origin::Grant)?;
        token.path = condition.original.clone();
        token.save_dir = None;
        token.condition = Some(condition);
        Ok(token)
    }

    /// A token on a file the agent is handed open (its stdin, stdout, stderr).
    pub fn stdio(
        keys: FileKeys,
        path: PathBuf,
        fd: std::os::fd::BorrowedFd<'_>,
        ops: Ops,
    ) -> Result<NewToken, TokenError> {
        use std::os::fd::AsRawFd;
        let label = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let found = keys.resolve_fd(&label, fd)?;
        Ok(NewToken {
            path,
            key: found.key,
            mnt_id: found.mnt_id,
            save_dir: None,
            ops,
            ttl_secs: None,
            origin: Origin::Stdio,
            condition: None,
        })
    }
}

/// The file tokens of every agent and what is still to be done about them: expiries to
/// enforce on memory mappings, revokes the state database has not taken yet. Owned here,
/// not by the agents service, which asks through these methods.
#[derive(Default)]
pub struct TokenStore {
    inner: Mutex<Inner>,
    /// One revoke or expiry enforcement at a time: one's thaw must not cut another's scan
    /// of a frozen agent short.
    enforcing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    tokens: BTreeMap<u64, Token>,
    /// Tokens with a TTL whose expiry is still to be enforced on mappings, by id.
    pending_expiries: BTreeMap<u64, Token>,
    /// (agent, token id) revoked in the kernel whose deletion the store refused (a full
    /// disk): retried before every store write, so a restart cannot grant them again once
    /// the disk has room.
    unsaved_revokes: Vec<(String, u64)>,
}

impl TokenStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds tokens; returns them and, per affected inode, the merged kernel entry to write.
    pub fn add(
        &self,
        agent: &str,
        cgroup_id: u64,
        new: Vec<NewToken>,
    ) -> (Vec<Token>, Vec<(FileKey, Option<FileGrantEntry>)>) {
        let (boot, unix) = (boot_time_ns(), now_unix_ms());
        let mut inner = self.lock();
        let mut added = Vec::new();
        for t in new {
            inner.next_id += 1;
            let token = Token {
                id: inner.next_id,
                agent: agent.to_owned(),
                cgroup_id,
                path: t.path,
                key: t.key,
                mnt_id: t.mnt_id,
                save_dir: t.save_dir,
                ops: t.ops,
                expires: t
                    .ttl_secs
                    .map(|s| (boot.saturating_add(s.saturating_mul(1_000_000_000)), unix + s * 1000)),
                granted_unix_ms: unix,
                origin: t.origin,
                condition: t.condition,
            };
            inner.tokens.insert(token.id, token.clone());
            added.push(token);
        }
        let entries = merged_entries(&inner, cgroup_id, added.iter().flat_map(Token::keys));
        (added, entries)
    }

    /// Removes the agent's tokens chosen by `pick`; returns them and the entries to rewrite.
    pub fn remove(
        &self,
        cgroup_id: u64,
        pick: impl Fn(&Token) -> bool,
    ) -> (Vec<Token>, Vec<(FileKey, Option<FileGrantEntry>)>) {
        let mut inner = self.lock();
        let ids: Vec<u64> =
            inner.tokens.values().filter(|t| t.cgroup_id == cgroup_id && pick(t)).map(|t| t.id).collect();
        let removed: Vec<Token> = ids.iter().filter_map(|id| inner.tokens.remove(id)).collect();
        let entries = merged_entries(&inner, cgroup_id, removed.iter().flat_map(Token::keys));
        (removed, entries)
    }

    /// The kernel moved the agent's grant on `from` to `to` (a save renamed a new file over
    /// the granted one): its tokens now name the new inode.
    pub fn rekey(&self, cgroup_id: u64, from: FileKey, to: FileKey) -> usize {
        let mut inner = self.lock();
        let mut moved = 0;
        for t in inner.tokens.values_mut().filter(|t| t.cgroup_id == cgroup_id && t.key == from) {
            t.key = to;
            moved += 1;
        }
        moved
    }

    /// Points the agent's tokens whose path now names another inode (a rollback swapped the
    /// tree under them) at that inode; returns the (from, to) moves and the kernel entries to
    /// write. Tokens whose path is gone keep their old inode.
    pub fn follow_paths(
        &self,
        keys: FileKeys,
        cgroup_id: u64,
    ) -> (Vec<(FileKey, FileKey)>, Vec<KernelEntry>) {
        let mut inner = self.lock();
        let mut moves = Vec::new();
        for t in inner.tokens.values_mut().filter(|t| t.cgroup_id == cgroup_id && t.condition.is_none()) {
            if let Ok(now) = keys.resolve(&t.path)
                && now.key != t.key
            {
                moves.push((t.key, now.key));
                t.key = now.key;
                t.mnt_id = now.mnt_id;
            }
        }
        let keys: Vec<FileKey> = moves.iter().flat_map(|(a, b)| [*a, *b]).collect();
        let entries = merged_entries(&inner, cgroup_id, keys.into_iter());
        (moves, entries)
    }

    /// Forgets an agent's tokens and their pending expiries (it has exited; the kernel
    /// entries go with the agent).
    pub fn forget_agent(&self, cgroup_id: u64) {
        let mut inner = self.lock();
        inner.tokens.retain(|_, t| t.cgroup_id != cgroup_id);
        inner.pending_expiries.retain(|_, t| t.cgroup_id != cgroup_id);
    }

    /// Waits for the turn to enforce a revoke or an expiry (one at a time).
    pub async fn enforcement_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.enforcing.lock().await
    }

    /// Remembers a token whose expiry must be enforced on mappings when it comes.
    pub fn expect_expiry(&self, token: Token) {
        self.lock().pending_expiries.insert(token.id, token);
    }

    /// Takes the agent's pending expiries due by `now_boot_ns`.
    pub fn take_due_expiries(&self, cgroup_id: u64, now_boot_ns: u64) -> Vec<Token> {
        let mut inner = self.lock();
        let due: Vec<u64> = inner
            .pending_expiries
            .values()
            .filter(|t| t.cgroup_id == cgroup_id && t.expires.is_some_and(|(ns, _)| ns <= now_boot_ns))
            .map(|t| t.id)
            .collect();
        due.iter().filter_map(|id| inner.pending_expiries.remove(id)).collect()
    }

    /// Ids of the tokens whose expiry is still to be enforced.
    pub fn pending_expiries(&self) -> Vec<u64> {
        self.lock().pending_expiries.keys().copied().collect()
    }

    /// Records revokes the store refused, for [`TokenStore::unsaved_revokes`] and a retry.
    pub fn note_unsaved_revokes(&self, agent: &str, ids: &[u64]) {
        self.lock().unsaved_revokes.extend(ids.iter().map(|id| (agent.to_owned(), *id)));
    }

    /// The revokes the store has not taken yet: (agent, token id).
    pub fn unsaved_revokes(&self) -> Vec<(String, u64)> {
        self.lock().unsaved_revokes.clone()
    }

    /// The store took these revokes at last.
    pub fn revokes_saved(&self, saved: &[(String, u64)]) {
        self.lock().unsaved_revokes.retain(|r| !saved.contains(r));
    }

    /// The agent's tokens.
    pub fn of_agent(&self, cgroup_id: u64) -> Vec<Token> {
        self.lock().tokens.values().filter(|t| t.cgroup_id == cgroup_id).cloned().collect()
    }

    /// Puts back tokens a previous daemon stored (ids kept); returns them and the kernel
    /// entries to write.
    pub fn restore(&self, tokens: Vec<Token>) -> (Vec<Token>, Vec<(FileKey, Option<FileGrantEntry>)>) {
        let mut inner = self.lock();
        let mut by_cgroup: BTreeMap<u64, Vec<FileKey>> = BTreeMap::new();
        for t in &tokens {
            inner.next_id = inner.next_id.max(t.id);
            by_cgroup.entry(t.cgroup_id).or_default().extend(t.keys());
            inner.tokens.insert(t.id, t.clone());
        }
        let entries = by_cgroup
            .into_iter()
            .flat_map(|(cg, keys)| merged_entries(&inner, cg, keys.into_iter()))
            .collect();
        (tokens, entries)
    }

    /// New ids start above `max` (ids are never reused, across restarts too).
    pub fn skip_ids_to(&self, max: u64) {
        let mut inner = self.lock();
        inner.next_id = inner.next_id.max(max);
    }

    /// The kernel entries the agent's tokens make, all of them (what its part of the grant
    /// map must hold).
    pub fn entries_of(&self, cgroup_id: u64) -> Vec<(FileKey, FileGrantEntry)> {
        let inner = self.lock();
        let keys: Vec<FileKey> =
            inner.tokens.values().filter(|t| t.cgroup_id == cgroup_id).flat_map(Token::keys).collect();
        merged_entries(&inner, cgroup_id, keys.into_iter())
            .into_iter()
            .filter_map(|(k, e)| Some((k, e?)))
            .collect()
    }

    /// The agent's conditional tokens.
    pub fn conditional(&self, cgroup_id: u64) -> Vec<Token> {
        self.lock()
            .tokens
            .values()
            .filter(|t| t.cgroup_id == cgroup_id && t.condition.is_some())
            .cloned()
            .collect()
    }

    pub fn list(&self, agent: Option<&str>) -> Vec<TokenInfo> {
        self.lock().tokens.values().filter(|t| agent.is_none_or(|a| t.agent == a)).map(Token::info).collect()
    }
}

/// The kernel entry for each key: per op, the latest expiry among the agent's tokens on
/// that inode (u64::MAX = no expiry, 0 = no token), plus the save right of the tokens
/// whose file is in that directory (as long as their write); None when nothing is left.
/// The mount: the tokens' when they agree, else any.
fn merged_entries(
    inner: &Inner,
    cgroup_id: u64,
    keys: impl Iterator<Item = FileKey>,
) -> Vec<(FileKey, Option<FileGrantEntry>)> {
    use std::collections::{BTreeSet, HashMap};
    // One pass over the agent's tokens for all keys: a spawn with 10,000 tokens must not
    // cost 10,000 passes.
    let mut merged: HashMap<FileKey, (FileGrantEntry, BTreeSet<u32>, bool)> =
        keys.map(|k| (k, (FileGrantEntry::default(), BTreeSet::new(), false))).collect();
    let save_slot = rush_ebpf::FILE_OP_SAVE.trailing_zeros() as usize;
    for t in inner.tokens.values().filter(|t| t.cgroup_id == cgroup_id) {
        let until = t.expires.map_or(u64::MAX, |(ns, _)| ns);
        if let Some((entry, mounts, any)) = merged.get_mut(&t.key) {
            *any = true;
            mounts.insert(t.mnt_id);
            for (bit, slot) in entry.expires_ns.iter_mut().enumerate().take(5) {
                if t.ops.contains(Ops(1 << bit)) {
                    *slot = (*slot).max(until);
                }
            }
        }
        if let Some((entry, mounts, any)) = t.save_dir.and_then(|dir| merged.get_mut(&dir)) {
            *any = true;
            mounts.insert(t.mnt_id);
            entry.expires_ns[save_slot] = entry.expires_ns[save_slot].max(until);
        }
    }
    let mut out: Vec<(FileKey, Option<FileGrantEntry>)> = merged
        .into_iter()
        .map(|(key, (mut entry, mounts, any))| {
            entry.mnt_id = if mounts.len() == 1 { mounts.first().copied().unwrap_or(0) } else { 0 };
            (key, any.then_some(entry))
        })
        .collect();
    out.sort_by_key(|(k, _)| (k.dev, k.ino));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: FileKey = FileKey { dev: 7, ino: 42 };

    fn token(ops: &str, ttl: Option<u64>) -> NewToken {
        NewToken {
            path: "/srv/a".into(),
            key: KEY,
            mnt_id: 1,
            save_dir: None,
            ops: ops.parse().unwrap(),
            ttl_secs: ttl,
            origin: Origin::Grant,
            condition: None,
        }
    }

    #[test]
    fn tokens_on_one_inode_merge_per_operation() {
        let store = TokenStore::default();
        let (_, e) = store.add("a", 1, vec![token("read", None)]);
        assert_eq!(e.len(), 1);
        let entry = e[0].1.unwrap();
        assert_eq!(entry.expires_ns[0], u64::MAX, "read forever");
        assert_eq!(entry.expires_ns[1], 0, "no write");

        let (added, e) = store.add("a", 1, vec![token("read,write", Some(60))]);
        let entry = e[0].1.unwrap();
        assert_eq!(entry.expires_ns[0], u64::MAX, "the forever read token still wins for read");
        assert!(
            entry.expires_ns[1] > boot_time_ns() && entry.expires_ns[1] < u64::MAX,
            "write lapses in 60 s"
        );

        // Revoking the timed token leaves the first one; revoking both deletes the entry.
        let id = added[0].id;
        let (removed, e) = store.remove(1, |t| t.id == id);
        assert_eq!(removed.len(), 1);
        assert_eq!(e[0].1.unwrap().expires_ns[1], 0);
        let (_, e) = store.remove(1, |_| true);
        assert_eq!(e, vec![(KEY, None)]);
    }

    #[test]
    fn agents_do_not_share_entries() {
        let store = TokenStore::default();
        store.add("a", 1, vec![token("read", None)]);
        let (_, e) = store.add("b", 2, vec![token("write", None)]);
        assert_eq!(e[0].1.unwrap().expires_ns[0], 0, "b's entry must not include a's read");
        store.forget_agent(1);
        assert_eq!(store.list(None).len(), 1);
        assert_eq!(store.list(Some("b")).len(), 1);
    }

    #[test]
    fn ten_thousand_tokens_merge_in_one_pass() {
        let store = TokenStore::default();
        let many: Vec<NewToken> = (0..10_000)
            .map(|i| NewToken { key: FileKey { dev: 7, ino: 1000 + i }, ..token("read", None) })
            .collect();
        let t = std::time::Instant::now();
        let (added, entries) = store.add("a", 1, many);
        assert_eq!((added.len(), entries.len()), (10_000, 10_000));
        assert!(entries.iter().all(|(_, e)| e.is_some_and(|e| e.expires_ns[0] == u64::MAX)));
        // Quadratic took minutes in a TCG guest; one pass is milliseconds even in debug.
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn expired_tokens_are_listed_as_expired() {
        let store = TokenStore::default();
        store.add("a", 1, vec![token("read", Some(0))]);
        assert!(store.list(None)[0].expired);
    }
}
