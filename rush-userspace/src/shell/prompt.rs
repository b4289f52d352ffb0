//! The prompt's Rush status (session, timeline, running agents, pending approvals): read
//! from the daemon by a background thread every few seconds and after each command, and
//! put in `$RUSH_PROMPT` from its cache before each prompt. A prompt never waits on the
//! socket: a slow or absent daemon shows the last status, or none.

use std::path::PathBuf;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use rush_proto::SessionRef;
use rush_proto::client::Client;

use super::{Shell, var_string};

const REFRESH: Duration = Duration::from_secs(2);
/// Commands in quick succession ask the daemon at most this often.
const MIN_GAP: Duration = Duration::from_millis(500);
const DEFAULT_PS1: &str = "${RUSH_PROMPT}\\u@\\h:\\w\\$ ";

#[derive(Default)]
struct Status {
    /// What to ask: the socket and the attached session.
    query: Option<(PathBuf, Option<String>)>,
    /// The last answer, rendered.
    text: String,
    wake: bool,
}

struct Shared {
    status: Mutex<Status>,
    cv: Condvar,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        std::thread::Builder::new()
            .name("rush-prompt".into())
            .spawn(poll)
            .expect("cannot start the prompt's status thread");
        Shared { status: Mutex::new(Status::default()), cv: Condvar::new() }
    })
}

/// Sets the default prompt (an rc file may replace it) and starts the status thread.
pub fn install(shell: &mut Shell) {
    if shell.env_var("PS1").is_none_or(|v| !v.is_exported()) {
        let _ = shell.set_env_global("PS1", brush_core::ShellVariable::new(DEFAULT_PS1.to_owned()));
    }
    let _ = shared();
}

/// Before a prompt: the cached status into $RUSH_PROMPT, and what to ask next time.
pub fn refresh(shell: &mut Shell) {
    let socket = var_string(shell, "RUSH_SOCKET")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| rush_proto::DEFAULT_SOCKET.to_owned());
    let session = var_string(shell, "RUSH_SESSION").filter(|s| !s.is_empty());
    let text = {
        let mut st = shared().status.lock().unwrap_or_else(|p| p.into_inner());
        let query = Some((PathBuf::from(socket), session));
        if st.query != query {
            st.query = query;
            st.text.clear();
            st.wake = true;
            shared().cv.notify_one();
        }
        st.text.clone()
    };
    let _ = shell.set_env_global("RUSH_PROMPT", brush_core::ShellVariable::new(text));
}

/// After a command (it may have spawned an agent or decided an approval): ask again soon.
pub fn command_done() {
    let mut st = shared().status.lock().unwrap_or_else(|p| p.into_inner());
    st.wake = true;
    shared().cv.notify_one();
}

fn poll() {
    let sh = shared();
    loop {
        let query = {
            let mut st = sh.status.lock().unwrap_or_else(|p| p.into_inner());
            if !st.wake {
                st = sh.cv.wait_timeout(st, REFRESH).unwrap_or_else(|p| p.into_inner()).0;
            }
            st.wake = false;
            st.query.clone()
        };
        std::thread::sleep(MIN_GAP.min(REFRESH));
        let Some((socket, session)) = query else { continue };
        let text = fetch(&socket, session.as_deref()).unwrap_or_default();
        let mut st = sh.status.lock().unwrap_or_else(|p| p.into_inner());
        if st.query.as_ref().is_some_and(|q| q.0 == socket && q.1 == session) {
            st.text = text;
        }
    }
}

/// `[demo@main · 2 agents · 1 approval] `, or None when the daemon does not answer.
fn fetch(socket: &std::path::Path, session: Option<&str>) -> Option<String> {
    if !socket.exists() {
        return None;
    }
    let mut c = Client::connect(socket).ok()?;
    let mut parts = Vec::new();
    if let Some(s) = session {
        match c.show_session(SessionRef { name: Some(s.to_owned()), cwd: None }) {
            Ok(d) => parts.push(format!("{}@{}", d.session.name, d.session.timeline)),
            Err(_) => parts.push(format!("{s}?")),
        }
    }
    let running = c.list_agents().ok()?.iter().filter(|a| a.state == rush_proto::AgentState::Running).count();
    if running > 0 {
        parts.push(format!("{running} agent{}", if running == 1 { "" } else { "s" }));
    }
    if let Ok((pending, _)) = c.list_approvals(None, false)
        && !pending.is_empty()
    {
        let n = pending.len();
        parts.push(format!("{n} approval{}", if n == 1 { "" } else { "s" }));
    }
    if parts.is_empty() {
        return Some(String::new());
    }
    Some(format!("[{}] ", parts.join(" · ")))
}
