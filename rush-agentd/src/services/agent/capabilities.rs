//! Agents' file capability tokens: made at spawn, granted, revoked, expired and committed;
//! written to the kernel (BPF LSM) or re-confining the agent (Landlock); revokes reaching
//! mapped files.

use super::*;
use crate::core::Fault;
use crate::services::agent::AgentError;

/// Conditional tokens' worktrees are numbered per daemon run.
pub(super) static CONDITION_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// How long a condition may run before it counts as failed.
pub(super) const CONDITION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// The operations an fd handed to an agent was opened for (its access mode).
pub(super) fn stdio_ops(fd: std::os::fd::BorrowedFd<'_>) -> Ops {
    match nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL) {
        Ok(flags) => match flags & libc::O_ACCMODE {
            libc::O_RDONLY => Ops::READ,
            libc::O_WRONLY => Ops::WRITE,
            libc::O_RDWR => Ops(Ops::READ.0 | Ops::WRITE.0),
            _ => Ops(0),
        },
        Err(_) => Ops(0),
    }
}

/// Per removed token: (inode, path, the operations no longer granted on that inode). A
/// token that had expired already took nothing away now; one whose operations another
/// token on the same inode still grants took those away from no one.
pub(super) fn lost_by_revoke(
    removed: &[Token],
    entries: &[(FileKey, Option<FileGrantEntry>)],
    now_boot_ns: u64,
) -> Vec<(FileKey, PathBuf, Ops)> {
    let still = |key: FileKey| -> u32 {
        let entry = entries.iter().find(|(k, _)| *k == key).and_then(|(_, e)| *e);
        entry.map_or(0, |e| {
            e.expires_ns
                .iter()
                .enumerate()
                .filter(|(_, t)| **t > now_boot_ns)
                .fold(0, |acc, (bit, _)| acc | 1 << bit)
        })
    };
    removed
        .iter()
        .filter(|t| t.expires.is_none_or(|(ns, _)| ns > now_boot_ns))
        .map(|t| (t.key, t.path.clone(), Ops(t.ops.0 & !still(t.key))))
        .filter(|(_, _, ops)| ops.0 != 0)
        .collect()
}

pub(super) fn token_err(what: &str, e: &TokenError) -> AgentError {
    let kind = match e {
        TokenError::Key(KeyError::Stat { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Fault::NotFound
        }
        _ => Fault::Invalid,
    };
    AgentError::new(kind, format!("{what}: {e}"))
}

/// `--hardlinks` under Landlock, which cannot see link counts: refuses while a directory
/// that `tokens` grant (for the ops the mode guards) holds a regular file with more than
/// one link that no token names by itself (among `tokens` and the files of `held`). The
/// baseline's system directories are not walked. Links made later are not seen.
pub(super) fn landlock_link_check<'a>(
    mode: Hardlinks,
    tokens: impl IntoIterator<Item = (&'a PathBuf, Ops, Origin)>,
    held: &[PathBuf],
) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let guarded = match mode {
        Hardlinks::Follow => return Ok(()),
        Hardlinks::RefuseWrite => Ops::WRITE.0,
        Hardlinks::Refuse => Ops::READ.0 | Ops::WRITE.0 | Ops::EXEC.0,
    };
    let tokens: Vec<(&PathBuf, Ops, Origin)> = tokens.into_iter().collect();
    let mut named = std::collections::HashSet::new();
    let mut dirs = Vec::new();
    for path in tokens.iter().map(|t| t.0).chain(held) {
        if let Ok(m) = std::fs::metadata(path)
            && !m.is_dir()
        {
            named.insert((m.dev(), m.ino()));
        }
    }
    for (path, ops, origin) in tokens {
        if origin != Origin::Baseline && ops.0 & guarded != 0 && path.is_dir() {
            dirs.push(path);
        }
    }
    for dir in dirs {
        crate::adapters::landlock::scan_links(dir, &named, crate::adapters::landlock::LINK_SCAN_MAX)
            .map_err(|e| {
                format!(
                    "--hardlinks {mode} under Landlock, which cannot check link counts, so the daemon looked \
                 below {}: {}; grant such a file by its own token, remove the extra link, or use \
                 --hardlinks follow",
                    dir.display(),
                    error_chain(&e)
                )
            })?;
    }
    Ok(())
}

impl AgentManager {
    /// The tokens a spawn with --allow starts with: the baseline (paths missing here are
    /// skipped) and the requested grants (which must exist).
    pub(super) fn spawn_tokens(
        &self,
        baseline: &[FileGrant],
        allow: &[FileGrant],
        exec: ExecRule,
        stdio: Option<&[OwnedFd; 3]>,
        log_path: Option<&std::path::Path>,
    ) -> Result<Vec<NewToken>, AgentError> {
        let mut tokens: Vec<NewToken> = baseline
            .iter()
            .filter_map(|g| match NewToken::resolve(self.enforcement.keys, g, Origin::Baseline) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::debug!(error = %e, "baseline token skipped");
                    None
                }
            })
            .collect();
        for g in allow {
            let mut g = g.clone();
            if exec == ExecRule::System {
                // Only the baseline runs programs: what the agent may write, it may not run.
                g.ops = Ops(g.ops.0 & !Ops::EXEC.0);
                if g.ops.0 == 0 {
                    continue;
                }
            }
            let t = NewToken::resolve(self.enforcement.keys, &g, Origin::Spawn)
                .map_err(|e| token_err("--allow", &e))?;
            tokens.push(t);
        }
        // What the agent was handed stays usable: a regular file as stdin/stdout/stderr
        // (`> out.txt`) or its log. Pipes and terminals need no token. In the modes it was
        // opened with, as under Landlock (which never checks an fd opened outside): stdin
        // handed read-write (`<> f`) may be written, stdout opened read-write read.
        if let Some(fds) = stdio {
            for fd in fds {
                use std::os::fd::AsFd;
                let meta = nix::sys::stat::fstat(fd.as_fd());
                let ops = stdio_ops(fd.as_fd());
                if meta.is_ok_and(|m| m.st_mode & libc::S_IFMT == libc::S_IFREG) && ops != Ops(0) {
                    let path =
                        std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd)))
                            .unwrap_or_default();
                    let token = NewToken::stdio(self.enforcement.keys, path, fd.as_fd(), ops)
                        .map_err(|e| token_err("stdio", &e))?;
                    tokens.push(token);
                }
            }
        }
        if let Some(log) = log_path {
            // Created now, so that it has an inode to grant.
            std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| {
                AgentError::new(Fault::Internal, format!("cannot create log {}: {e}", log.display()))
            })?;
            let grant = FileGrant { path: log.to_owned(), ops: Ops::WRITE, ttl_secs: None };
            tokens.push(
                NewToken::resolve(self.enforcement.keys, &grant, Origin::Stdio)
                    .map_err(|e| token_err("log", &e))?,
            );
        }
        Ok(tokens)
    }

    /// The baseline of an agent of `caller`'s: home entries under the home of the user
    /// it runs as, and its TMPDIR (read, write, create, delete; never exec).
    pub(super) fn agent_baseline(&self, caller: &Caller, tmp: Option<&std::path::Path>) -> Vec<FileGrant> {
        let uid = if nix::unistd::geteuid().is_root() { caller.uid } else { nix::unistd::geteuid().as_raw() };
        let mut grants = crate::services::baseline::expand(
            &self.baseline,
            crate::services::baseline::home_of(uid).as_deref(),
        );
        if let Some(dir) = tmp {
            let ops = Ops(Ops::READ.0 | Ops::WRITE.0 | Ops::CREATE.0 | Ops::DELETE.0);
            grants.push(FileGrant { path: dir.to_owned(), ops, ttl_secs: None });
        }
        grants
    }

    /// Removes what agents left in the private TMPDIRs, except the directories of living
    /// (adopted) agents: the daemon calls it once adoption is done.
    pub fn sweep_private_tmp(&self) {
        let Some(tmp) = &self.private_tmp else { return };
        let live: HashSet<PathBuf> = {
            let reg = self.registry();
            let running: Vec<u64> = reg
                .agents
                .values()
                .filter(|a| a.info.state == AgentState::Running)
                .map(|a| a.cgroup.id)
                .collect();
            drop(reg);
            running.into_iter().flat_map(|id| self.tokens.of_agent(id)).map(|t| t.path).collect()
        };
        tmp.sweep(|d| live.contains(d));
    }

    /// A new TMPDIR for agent `name`, owned by the user it runs as; for a restart, the
    /// one its carried tokens name, made again if gone. None when private TMPDIRs are off.
    pub(super) fn private_tmp_for(
        &self,
        name: &str,
        caller: &Caller,
        carried: Option<&[Token]>,
    ) -> Result<Option<crate::services::baseline::TmpDir>, AgentError> {
        let Some(tmp) = self.private_tmp.as_ref() else { return Ok(None) };
        let owner = nix::unistd::geteuid().is_root().then_some((caller.uid, caller.gid));
        let made = match carried.and_then(|c| c.iter().find(|t| tmp.owns(&t.path))) {
            Some(t) => tmp.recreate(&t.path, owner),
            None if carried.is_some() => return Ok(None),
            None => tmp.create(name, owner),
        };
        made.map(Some).map_err(|e| {
            AgentError::new(Fault::Internal, format!("cannot give the agent its TMPDIR: {}", error_chain(&e)))
        })
    }

    /// The TMPDIRs among the tokens of the agent in cgroup `cgroup_id`.
    pub(super) fn private_tmp_dirs(&self, cgroup_id: u64) -> Vec<PathBuf> {
        let Some(tmp) = self.private_tmp.as_ref() else { return Vec::new() };
        self.tokens.of_agent(cgroup_id).into_iter().map(|t| t.path).filter(|p| tmp.owns(p)).collect()
    }

    pub(super) async fn remove_private_tmp(&self, dirs: Vec<PathBuf>) {
        let Some(tmp) = self.private_tmp.clone() else { return };
        let _ = tokio::task::spawn_blocking(move || dirs.iter().for_each(|d| tmp.remove(d))).await;
    }

    /// The cgroup of the running, file-confined agent `name`.
    pub(super) fn confined_agent(&self, name: &str) -> Result<AgentCgroup, AgentError> {
        let reg = self.registry();
        let a = reg.agents.get(name).ok_or_else(|| not_found(name))?;
        if a.info.state != AgentState::Running {
            return Err(AgentError::new(Fault::Invalid, format!("agent {name:?} has exited")));
        }
        if !a.files_confined {
            return Err(AgentError::new(
                Fault::Invalid,
                format!(
                    "agent {name:?} is not file-confined (it was spawned without --allow): its file access \
                     is not restricted, so a token would change nothing"
                ),
            ));
        }
        Ok(a.cgroup.clone())
    }

    /// After a rollback swapped the workspace's tree, the agent's tokens follow their paths
    /// to the new inodes (kernel map and store), so a restored agent keeps what it was granted.
    pub fn follow_token_paths(&self, name: &str) -> Result<usize, AgentError> {
        let cg = self.running(name)?;
        let (moves, entries) = self.tokens.follow_paths(self.enforcement.keys, cg.id);
        self.write_entries(cg.id, entries)?;
        for (from, to) in &moves {
            self.persist_rekey(cg.id, *from, *to);
        }
        Ok(moves.len())
    }

    /// The tokens (for the kernel's own changes to them, e.g. a grant moved by a save).
    pub fn tokens(&self) -> &TokenStore {
        &self.tokens
    }

    /// Adds a token. A Landlock-confined agent is then frozen and restarted under the
    /// widened rules, or killed (`[landlock] on_widen`): the returned effect says which.
    pub async fn grant(
        self: &Arc<Self>,
        req: GrantRequest,
        caller: &Caller,
    ) -> Result<(TokenInfo, Option<ChangeEffect>), AgentError> {
        let files = self.files_of(&req.agent);
        if let (FileBackend::Unavailable(why), false) =
            (&self.enforcement.files, files == Some(Files::Unenforced))
        {
            return Err(AgentError::new(Fault::Unsupported, format!("refusing the grant: {why}")));
        }
        let cgroup_id = self.confined_agent(&req.agent)?.id;
        if files == Some(Files::Landlock) && req.condition.is_some() {
            return Err(AgentError::new(
                Fault::Unsupported,
                format!(
                    "refusing --condition: agent {:?} is confined by Landlock, whose rules are paths fixed \
                     at start, so its writes cannot be redirected to a worktree (conditional tokens need \
                     BPF LSM); grant the directory itself, or a worktree you made, without --condition",
                    req.agent
                ),
            ));
        }
        let effect = match files {
            Some(Files::Landlock) => Some(self.planned_effect(&req.agent, true)?),
            _ => None,
        };
        if req.ops.0 == 0 {
            return Err(AgentError::new(Fault::Invalid, "no operations to grant"));
        }
        if req.ops.contains(Ops::EXEC) {
            let reg = self.registry();
            if let Some(a) = reg.agents.get(&req.agent).filter(|a| a.exec == ExecRule::System) {
                return Err(AgentError::new(
                    Fault::Forbidden,
                    format!(
                        "refusing exec on {}: agent {:?} runs at trust level {:?}, whose exec rule is \"system\" \
                         (only the baseline tokens may run programs)",
                        req.path.display(),
                        req.agent,
                        a.info.trust.as_deref().unwrap_or("?")
                    ),
                ));
            }
        }
        let grant = FileGrant { path: req.path, ops: req.ops, ttl_secs: req.duration_secs };
        let new = match req.condition {
            Some(command) => self.conditional_token(&req.agent, &grant, command)?,
            None => NewToken::resolve(self.enforcement.keys, &grant, Origin::Grant)
                .map_err(|e| token_err("grant", &e))?,
        };
        if files == Some(Files::Landlock) {
            let mode = self.registry().agents.get(&req.agent).map(|a| a.info.hardlinks).unwrap_or_default();
            let held: Vec<PathBuf> = self.tokens.of_agent(cgroup_id).into_iter().map(|t| t.path).collect();
            landlock_link_check(mode, [(&new.path, new.ops, new.origin)], &held)
                .map_err(|e| AgentError::new(Fault::Unsupported, format!("refusing the grant: {e}")))?;
        }
        let (added, entries) = self.tokens.add(&req.agent, cgroup_id, vec![new]);
        let ids: Vec<u64> = added.iter().map(|t| t.id).collect();
        // The store first: a crash after it and before the kernel write is mended by the
        // restart (the kernel map is rebuilt from the store); the other order could leave
        // an access in the kernel that nothing records.
        if let Err(e) = self.save("grant", |s| s.put_tokens(&added)) {
            self.tokens.remove(cgroup_id, |t| ids.contains(&t.id));
            return Err(e);
        }
        if let Err(e) = self.save_restart(&req.agent) {
            self.tokens.remove(cgroup_id, |t| ids.contains(&t.id));
            self.persist("an undone grant", |s| s.delete_tokens(&ids));
            return Err(e);
        }
        if files == Some(Files::BpfLsm)
            && let Err(e) = self.write_entries(cgroup_id, entries)
        {
            let (_, entries) = self.tokens.remove(cgroup_id, |t| ids.contains(&t.id));
            let _ = self.write_entries(cgroup_id, entries);
            self.persist("an undone grant", |s| s.delete_tokens(&ids));
            return Err(e);
        }
        let token = added[0].info();
        self.audit
            .record(Some(&req.agent), AuditEvent::Grant { caller_uid: caller.uid, token: token.clone() });
        for t in added {
            self.schedule_expiry(t);
        }
        let effect = match effect {
            Some(planned) => Some(self.reconfine(planned, TokenChange::Grant, caller).await?),
            None => None,
        };
        Ok((token, effect))
    }

    /// How the running agent `name`'s files are confined; None if there is no such agent.
    pub(super) fn files_of(&self, name: &str) -> Option<Files> {
        self.registry().agents.get(name).map(|a| a.files)
    }

    /// What a grant (`widen`) or a revoke would do to the running agent `name`.
    pub(super) fn planned_effect(&self, name: &str, widen: bool) -> Result<ChangeEffect, AgentError> {
        // Refuses exited and unconfined agents, as the change itself would.
        self.confined_agent(name)?;
        let reg = self.registry();
        let a = reg.agents.get(name).ok_or_else(|| not_found(name))?;
        let pid = a.info.pid;
        let (action, detail) = match a.files {
            Files::BpfLsm => (
                ChangeAction::InPlace,
                "BPF LSM: the kernel's grant map changes under the running agent; open files are \
                 checked again at their next read or write, and a process that maps a file which lost \
                 an operation is killed"
                    .to_string(),
            ),
            Files::Landlock => {
                let (policy, key) = if widen {
                    (self.enforcement.landlock.on_widen, "on_widen")
                } else {
                    (self.enforcement.landlock.on_narrow, "on_narrow")
                };
                let head = format!(
                    "Landlock cannot change the rules of a running process: agent {name} (pid {pid}) will be \
                     frozen and"
                );
                match (policy, &a.respawn) {
                    (crate::adapters::landlock::OnChange::Restart, Some(r)) => (
                        ChangeAction::Restart,
                        format!(
                            "{head} restarted ([landlock] {key} = \"restart\"): its process tree killed, then \
                             `{}` started again under the new rules, with a new pid, from the beginning \
                             (restart from a checkpoint comes with time travel)",
                            r.req.command.join(" ")
                        ),
                    ),
                    (crate::adapters::landlock::OnChange::Restart, None) => (
                        ChangeAction::Kill,
                        format!(
                            "{head} killed: it {} so it cannot be restarted",
                            if a.info.detached {
                                "was re-adopted after a daemon restart (its environment is not stored),"
                            } else {
                                "runs in the foreground (its terminal cannot be handed to a new process),"
                            }
                        ),
                    ),
                    (crate::adapters::landlock::OnChange::Kill, _) => {
                        (ChangeAction::Kill, format!("{head} killed ([landlock] {key} = \"kill\")"))
                    }
                }
            }
            Files::Unenforced => (
                ChangeAction::None,
                format!(
                    "agent {name} is UNCONFINED: nothing enforces its file tokens; the change is only recorded"
                ),
            ),
            Files::Open => unreachable!("confined_agent refuses agents spawned without --allow"),
        };
        drop(reg);
        Ok(ChangeEffect {
            agent: name.to_owned(),
            backend: self.files_of(name).map_or(FilesBackend::None, Files::backend),
            action,
            detail,
            pid,
            new_pid: None,
        })
    }

    /// What a grant (`revoke: None`) or this revoke would do to the running agent, without
    /// doing it (`rush capability grant/revoke` print it first).
    pub fn change_effect(
        &self,
        name: &str,
        revoke: Option<&RevokeTarget>,
    ) -> Result<ChangeEffect, AgentError> {
        let cgroup_id = self.confined_agent(name)?.id;
        if let Some(target) = revoke {
            let key = match target {
                RevokeTarget::Path(p) => self.enforcement.keys.key(p).ok(),
                RevokeTarget::Id(_) => None,
            };
            let any = self.tokens.of_agent(cgroup_id).iter().any(|t| match target {
                RevokeTarget::Id(id) => t.id == *id,
                RevokeTarget::Path(p) => t.path == *p || Some(t.key) == key,
            });
            if !any {
                return Err(AgentError::new(Fault::NotFound, format!("agent {name:?} has no such token")));
            }
        }
        self.planned_effect(name, revoke.is_none())
    }

    /// Landlock cannot change a running process's rules: the agent is frozen, then killed,
    /// and (for `restart`) its command started again under its tokens as they are now.
    pub(super) async fn reconfine(
        self: &Arc<Self>,
        planned: ChangeEffect,
        cause: TokenChange,
        caller: &Caller,
    ) -> Result<ChangeEffect, AgentError> {
        let name = planned.agent.clone();
        let (cg, respawn) = {
            let reg = self.registry();
            let a = reg.agents.get(&name).ok_or_else(|| not_found(&name))?;
            (a.cgroup.clone(), a.respawn.clone())
        };
        // Frozen first: from here on it does nothing under its old rules.
        if let Err(e) = self.freeze_for(&name, &cg).await {
            tracing::warn!(agent = %name, error = %e.message, "not frozen before the kill");
        }
        let now = boot_time_ns();
        let carried: Vec<Token> = self
            .tokens
            .of_agent(cg.id)
            .into_iter()
            .filter(|t| t.expires.is_none_or(|(ns, _)| ns > now))
            .collect();
        self.kill(&name, caller).await?;
        let mut effect = planned;
        if effect.action == ChangeAction::Restart
            && let Some(r) = respawn
        {
            match self.spawn_inner(r.req, &r.caller, None, Some(carried)).await {
                Ok((info, _)) => effect.new_pid = Some(info.pid),
                Err(e) => {
                    tracing::error!(agent = %name, error = %e.message, "killed for new Landlock rules, but not restarted");
                    self.audit.record(
                        Some(&name),
                        AuditEvent::RulesetChange {
                            action: ChangeAction::Kill,
                            cause,
                            old_pid: effect.pid,
                            new_pid: None,
                        },
                    );
                    return Err(AgentError::new(
                        e.fault,
                        format!(
                            "agent {name} was killed for its new rules but could not be restarted: {}",
                            e.message
                        ),
                    ));
                }
            }
        }
        tracing::info!(agent = %name, action = %effect.action, %cause, old_pid = effect.pid, new_pid = ?effect.new_pid, "Landlock rules changed");
        self.audit.record(
            Some(&name),
            AuditEvent::RulesetChange {
                action: effect.action,
                cause,
                old_pid: effect.pid,
                new_pid: effect.new_pid,
            },
        );
        Ok(effect)
    }

    /// A conditional token: its worktree made now, a copy of the directory.
    pub(super) fn conditional_token(
        &self,
        agent: &str,
        grant: &FileGrant,
        command: String,
    ) -> Result<NewToken, AgentError> {
        if command.trim().is_empty() {
            return Err(AgentError::new(Fault::Invalid, "--condition: the command is empty"));
        }
        if !grant.ops.contains(Ops::WRITE) {
            return Err(AgentError::new(
                Fault::Invalid,
                format!("--condition guards writes, but the ops ({}) include no write", grant.ops),
            ));
        }
        if !grant.path.is_absolute() {
            return Err(AgentError::new(
                Fault::Invalid,
                format!("path {} must be absolute", grant.path.display()),
            ));
        }
        let id = CONDITION_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let worktree = crate::adapters::condition::create_worktree(&grant.path, agent, id)
            .map_err(|e| AgentError::new(Fault::Invalid, format!("--condition: {e}")))?;
        let condition = Condition { command, original: grant.path.clone(), worktree };
        NewToken::conditional(self.enforcement.keys, grant, condition).map_err(|e| token_err("grant", &e))
    }

    /// Runs the conditions of the agent's conditional tokens (one, or all): each in a
    /// confined agent of its own (cwd: the worktree, network denied, writes to the
    /// worktree only), with the agent frozen meanwhile; exit 0 promotes the worktree's
    /// changes to the directory, anything else puts the worktree back as the directory is.
    pub async fn commit(
        self: &Arc<Self>,
        agent: &str,
        token: Option<u64>,
    ) -> Result<Vec<rush_proto::CommitOutcome>, AgentError> {
        let cg = self.confined_agent(agent)?;
        let cgroup_id = cg.id;
        let tokens: Vec<Token> = self
            .tokens
            .conditional(cgroup_id)
            .into_iter()
            .filter(|t| token.is_none_or(|id| t.id == id))
            .collect();
        if tokens.is_empty() {
            return Err(AgentError::new(
                Fault::NotFound,
                match token {
                    Some(id) => format!("agent {agent} has no conditional token {id}"),
                    None => format!("agent {agent} has no conditional token"),
                },
            ));
        }
        let cgroups = Arc::clone(&self.cgroups);
        let frozen = cg.clone();
        let froze =
            tokio::task::spawn_blocking(move || cgroups.freeze(&frozen, std::time::Duration::from_secs(5)))
                .await
                .map_err(|e| AgentError::new(Fault::Internal, format!("freezing {agent}: {e}")))?
                .map_err(|e| {
                    AgentError::new(Fault::Internal, format!("freezing {agent}: {}", error_chain(&e)))
                })?;
        if !froze {
            tracing::warn!(agent, "not frozen within 5 s; its condition runs anyway");
        }
        let outcomes = self.commit_tokens(agent, tokens, CommitCause::Request).await;
        let cgroups = Arc::clone(&self.cgroups);
        let _ = tokio::task::spawn_blocking(move || cgroups.thaw(&cg)).await;
        Ok(outcomes)
    }

    pub(super) async fn commit_tokens(
        self: &Arc<Self>,
        agent: &str,
        tokens: Vec<Token>,
        cause: CommitCause,
    ) -> Vec<rush_proto::CommitOutcome> {
        let mut outcomes = Vec::new();
        for t in tokens {
            let Some(c) = t.condition.clone() else { continue };
            let exit = self.run_condition(agent, t.id, &c).await;
            let (promoted, synced, reason) = match &exit {
                Ok(0) => (true, crate::adapters::condition::sync(&c.worktree, &c.original), None),
                Ok(code) => (
                    false,
                    crate::adapters::condition::sync(&c.original, &c.worktree),
                    Some(format!("`{}` exited with {code}", c.command)),
                ),
                Err(why) => {
                    (false, crate::adapters::condition::sync(&c.original, &c.worktree), Some(why.clone()))
                }
            };
            let (changes, reason) = match synced {
                Ok(changes) => (changes, reason),
                Err(e) => (
                    crate::adapters::condition::Changes::default(),
                    Some(format!("{}{e}", reason.map(|r| format!("{r}; ")).unwrap_or_default())),
                ),
            };
            let outcome = rush_proto::CommitOutcome {
                token: t.id,
                path: c.original.clone(),
                worktree: c.worktree.clone(),
                condition: c.command.clone(),
                exit_code: exit.ok(),
                promoted: promoted && reason.is_none(),
                added: changes.added,
                changed: changes.changed,
                removed: changes.removed,
                reason,
            };
            self.audit.record(Some(agent), AuditEvent::Commit { outcome: outcome.clone(), cause });
            if cause == CommitCause::Exit {
                let _ = std::fs::remove_dir_all(&c.worktree);
            }
            outcomes.push(outcome);
        }
        outcomes
    }

    /// The condition's exit code, run as agent `NAME-check-ID`.
    pub(super) async fn run_condition(
        self: &Arc<Self>,
        agent: &str,
        token: u64,
        c: &Condition,
    ) -> Result<i32, String> {
        // As the agent's user.
        let uid = self.status(agent).map(|a| a.uid).unwrap_or(0);
        let grants = vec![FileGrant { path: c.worktree.clone(), ops: Ops(0x1f), ttl_secs: None }];
        self.run_check(
            &format!("{agent}-check-{token}"),
            &c.command,
            &c.worktree,
            grants,
            uid,
            CONDITION_TIMEOUT,
        )
        .await
    }

    /// Runs `command` (`sh -c`) as agent `name` in `dir`, as `uid` (its primary group
    /// from the user database, else gid = uid), confined to `grants` with no network:
    /// its exit code, or why there is none. Killed after `timeout`.
    pub async fn run_check(
        self: &Arc<Self>,
        name: &str,
        command: &str,
        dir: &std::path::Path,
        grants: Vec<FileGrant>,
        uid: u32,
        timeout: std::time::Duration,
    ) -> Result<i32, String> {
        let req = SpawnRequest {
            name: name.to_owned(),
            command: vec!["/bin/sh".into(), "-c".into(), command.to_owned()],
            net: Some(rush_proto::NetPolicy::Deny),
            trust: None,
            budget: Budget::default(),
            allow: grants,
            env: vec![
                ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                ("HOME".into(), dir.display().to_string()),
            ],
            cwd: dir.to_owned(),
            stdio: StdioMode::Log,
            tty_size: None,
            allow_unconfined: false,
            session: None,
            restartable: false,
            hardlinks: None,
            user: None,
        };
        let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or(uid, |u| u.gid.as_raw());
        let root = Caller { uid, gid, pid: std::process::id() as i32, groups: Vec::new() };
        let (_, mut exit) = Box::pin(self.spawn(req, &root, None))
            .await
            .map_err(|e| format!("cannot start `{command}`: {}", e.message))?;
        // The status is copied out: the watch guard must not live across the kill below.
        let waited = tokio::time::timeout(timeout, exit.wait_for(Option::is_some))
            .await
            .map(|r| r.map(|status| *status));
        match waited {
            Ok(Ok(status)) => match status {
                Some(ExitStatus { code: Some(code), .. }) => Ok(code),
                Some(s) => Err(format!("`{command}` was killed ({s:?})")),
                None => Err("no exit status".into()),
            },
            Ok(Err(_)) => Err(format!("the agent running `{command}` vanished")),
            Err(_) => {
                let _ = self.kill(name, &root).await;
                Err(format!("`{command}` ran longer than {} s", timeout.as_secs()))
            }
        }
    }

    /// Revokes tokens. Once the kernel map no longer grants what they did, processes of
    /// the agent whose memory mappings use what was taken away are killed (see
    /// [`crate::adapters::mappings`]); the agent is frozen from before the map change until then.
    pub async fn revoke(
        self: &Arc<Self>,
        agent: &str,
        target: RevokeTarget,
        caller: &Caller,
    ) -> Result<(Vec<TokenInfo>, Option<ChangeEffect>), AgentError> {
        let _one = self.tokens.enforcement_turn().await;
        let cg = self.confined_agent(agent)?;
        let cgroup_id = cg.id;
        let files = self.files_of(agent);
        let planned = match files {
            Some(Files::Landlock | Files::Unenforced) => Some(self.planned_effect(agent, false)?),
            _ => None,
        };
        let (removed, entries) = match &target {
            RevokeTarget::Id(id) => self.tokens.remove(cgroup_id, |t| t.id == *id),
            RevokeTarget::Path(p) => {
                // The path as it was granted, or whatever inode it names now.
                let key = self.enforcement.keys.key(p).ok();
                self.tokens.remove(cgroup_id, |t| t.path == *p || Some(t.key) == key)
            }
        };
        if removed.is_empty() {
            let what = match target {
                RevokeTarget::Id(id) => format!("token {id}"),
                RevokeTarget::Path(p) => format!("token on {}", p.display()),
            };
            return Err(AgentError::new(Fault::NotFound, format!("agent {agent:?} has no {what}")));
        }
        if let Some(planned) = planned {
            let tokens: Vec<TokenInfo> = removed.iter().map(|t| t.info()).collect();
            self.audit
                .record(Some(agent), AuditEvent::Revoke { caller_uid: caller.uid, tokens: tokens.clone() });
            let ids: Vec<u64> = removed.iter().map(|t| t.id).collect();
            // Landlock: the new rules reach the agent only by the restart below, which a
            // refused write must not skip; the refusal is reported after it.
            let saved = self.save_revoke(agent, &ids);
            let effect = match files {
                Some(Files::Landlock) => self.reconfine(planned, TokenChange::Revoke, caller).await?,
                _ => planned,
            };
            saved?;
            return Ok((tokens, Some(effect)));
        }
        let lost = lost_by_revoke(&removed, &entries, boot_time_ns());
        let killed = self.enforce(cg, lost, move |mgr| mgr.write_entries(cgroup_id, entries)).await?;
        let tokens: Vec<TokenInfo> = removed.iter().map(|t| t.info()).collect();
        self.audit.record(Some(agent), AuditEvent::Revoke { caller_uid: caller.uid, tokens: tokens.clone() });
        let ids: Vec<u64> = removed.iter().map(|t| t.id).collect();
        self.record_kills(agent, killed, TokenChange::Revoke);
        self.save_revoke(agent, &ids)?;
        Ok((tokens, None))
    }

    /// At a token's expiry (the kernel lapses it by itself), the same enforcement on
    /// memory mappings as a revoke.
    pub(super) fn schedule_expiry(self: &Arc<Self>, token: Token) {
        let Some((deadline, _)) = token.expires else { return };
        let cgroup_id = token.cgroup_id;
        self.tokens.expect_expiry(token);
        let mgr = Arc::downgrade(self);
        tokio::spawn(async move {
            // The deadline is CLOCK_BOOTTIME; tokio's clock stops during suspend: re-check.
            loop {
                let now = boot_time_ns();
                if now >= deadline {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_nanos(deadline - now)).await;
            }
            if let Some(mgr) = mgr.upgrade() {
                mgr.expire_due(cgroup_id).await;
            }
        });
    }

    /// Ids of the tokens whose expiry is still to be enforced on mappings.
    pub fn pending_expiries(&self) -> Vec<u64> {
        self.tokens.pending_expiries()
    }

    /// Enforces, in one freeze, the expiry of every token of the agent due by now: tokens
    /// granted together lapse together, and the first of their timers does it for all.
    pub(super) async fn expire_due(self: Arc<Self>, cgroup_id: u64) {
        let _one = self.tokens.enforcement_turn().await;
        let now = boot_time_ns();
        let due = self.tokens.take_due_expiries(cgroup_id, now);
        if due.is_empty() {
            return;
        }
        let cg = {
            let reg = self.registry();
            let running =
                reg.agents.values().find(|a| a.cgroup.id == cgroup_id && a.info.state == AgentState::Running);
            match running {
                Some(a) => a.cgroup.clone(),
                None => return,
            }
        };
        // Tokens revoked meanwhile: the revoke did this already.
        let live: HashSet<u64> = self.tokens.list(Some(&cg.name)).into_iter().map(|t| t.id).collect();
        let lost: Vec<(FileKey, PathBuf, Ops)> =
            due.into_iter().filter(|t| live.contains(&t.id)).map(|t| (t.key, t.path, t.ops)).collect();
        if lost.is_empty() {
            return;
        }
        let name = cg.name.clone();
        match self.files_of(&name) {
            Some(Files::Landlock) => {
                // The kernel knows nothing of the deadline: this is the expiry.
                let daemon = Caller { uid: 0, gid: 0, pid: std::process::id() as i32, groups: Vec::new() };
                let done = match self.planned_effect(&name, false) {
                    Ok(planned) => self.reconfine(planned, TokenChange::Expiry, &daemon).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = done {
                    tracing::error!(agent = %name, error = %e.message, "token expiry not enforced");
                }
                return;
            }
            Some(Files::Unenforced) => return,
            _ => {}
        }
        match self.enforce(cg, lost, |_| Ok(())).await {
            Ok(killed) => self.record_kills(&name, killed, TokenChange::Expiry),
            Err(e) => tracing::error!(agent = %name, error = %e.message, "expiry not enforced on mappings"),
        }
    }

    /// [`crate::adapters::mappings::enforce`] on a blocking thread (it waits for the freeze and
    /// reads /proc): `apply` is the kernel map change.
    pub(super) async fn enforce(
        self: &Arc<Self>,
        cg: AgentCgroup,
        lost: Vec<(FileKey, PathBuf, Ops)>,
        apply: impl FnOnce(&AgentManager) -> Result<(), AgentError> + Send + 'static,
    ) -> Result<Vec<Killed>, AgentError> {
        if lost.is_empty() {
            return apply(self).map(|()| Vec::new());
        }
        let mgr = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let lost: Vec<Lost> = lost
                .into_iter()
                .map(|(key, path, ops)| Lost { key, paths: path_forms(&path), ops })
                .collect();
            let kept = || -> Vec<Kept> {
                let live = mgr.tokens.list(Some(&cg.name)).into_iter().filter(|t| !t.expired);
                live.map(|t| Kept { paths: path_forms(&t.path), ops: t.ops }).collect()
            };
            crate::adapters::mappings::enforce(&*mgr.cgroups, &cg, &lost, &kept, || apply(&mgr))
        })
        .await
        .map_err(|e| AgentError::new(Fault::Internal, format!("enforcing on memory mappings: {e}")))?
    }

    pub(super) fn record_kills(&self, agent: &str, killed: Vec<Killed>, cause: TokenChange) {
        for k in killed {
            tracing::warn!(agent, pid = k.pid, path = %k.path.display(), ops = %k.ops, %cause, "killed: maps a file it may no longer use");
            self.audit.record(
                Some(agent),
                AuditEvent::RevokeKill {
                    pid: k.pid,
                    comm: k.comm,
                    path: k.path.display().to_string(),
                    ops: k.ops.to_string(),
                    cause,
                },
            );
        }
    }

    pub fn capabilities(&self, agent: Option<&str>) -> Result<Vec<TokenInfo>, AgentError> {
        if let Some(name) = agent
            && !self.registry().agents.contains_key(name)
        {
            return Err(not_found(name));
        }
        Ok(self.tokens.list(agent))
    }

    pub(super) fn write_entries(
        &self,
        cgroup_id: u64,
        entries: Vec<(crate::core::FileKey, Option<crate::adapters::bpf::FileGrantEntry>)>,
    ) -> Result<(), AgentError> {
        for (key, entry) in entries {
            self.kernel.set_file_grant(cgroup_id, key, entry).map_err(|e| {
                AgentError::new(Fault::Internal, format!("kernel grant map not updated: {}", error_chain(&e)))
            })?;
        }
        Ok(())
    }
}
