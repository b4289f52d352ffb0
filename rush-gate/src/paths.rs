//! Lexical path judgement: resolve against the working directory, normalise `.` and `..`,
//! and ask where a path lies. Nothing here touches the file system (a gate that read
//! symlinks would judge the machine, not the command, and would not be deterministic).

/// `path` made absolute against `cwd`, with `.`, `..` and repeated slashes removed.
pub(crate) fn resolve(cwd: &str, path: &str) -> String {
    let joined;
    let full = if path.starts_with('/') {
        path
    } else {
        joined = format!("{cwd}/{path}");
        &joined
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in full.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() { "/".to_owned() } else { format!("/{}", parts.join("/")) }
}

/// Whether `path` is `dir` or lies below it (both absolute and normalised).
pub(crate) fn within(path: &str, dir: &str) -> bool {
    if dir == "/" {
        return path.starts_with('/');
    }
    path == dir || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

/// Whether `path` is a strict ancestor of `dir`.
pub(crate) fn strictly_above(path: &str, dir: &str) -> bool {
    path != dir && within(dir, path)
}

/// Files whose writes go nowhere (or to the terminal): not writes to judge.
pub(crate) fn is_sink(path: &str) -> bool {
    matches!(path, "/dev/null" | "/dev/stdout" | "/dev/stderr" | "/dev/tty" | "/dev/zero")
        || path.starts_with("/dev/fd/")
        || path.starts_with("/proc/self/fd/")
}

/// The directory a path names once a trailing glob component (`/*`, `/.*`) is dropped:
/// `rm -rf /*` empties `/` as surely as `rm -rf /` does.
pub(crate) fn strip_trailing_glob(path: &str) -> &str {
    for suffix in ["/*", "/.*", "/.[!.]*", "/*.*"] {
        if let Some(dir) = path.strip_suffix(suffix) {
            return if dir.is_empty() { "/" } else { dir };
        }
    }
    path
}

/// Expands a leading `~` in a configured path list entry against `home`.
pub(crate) fn with_home(entry: &str, home: &str) -> String {
    match entry.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("{home}{rest}"),
        _ => entry.to_owned(),
    }
}

/// Whether an argument looks like it names a file (judged as a path), not an option value,
/// URL or plain word.
pub(crate) fn looks_like_path(arg: &str) -> bool {
    !arg.contains("://")
        && (arg.starts_with('/')
            || arg.starts_with("./")
            || arg.starts_with("../")
            || arg == "."
            || arg == ".."
            || arg.contains('/')
            || arg.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_lexically() {
        assert_eq!(resolve("/work/ws", "a/../b/./c"), "/work/ws/b/c");
        assert_eq!(resolve("/work/ws", ".."), "/work");
        assert_eq!(resolve("/work/ws", "../../../.."), "/");
        assert_eq!(resolve("/work/ws", "/etc//passwd"), "/etc/passwd");
        assert_eq!(resolve("/", "."), "/");
    }

    #[test]
    fn containment() {
        assert!(within("/work/ws/a", "/work/ws"));
        assert!(within("/work/ws", "/work/ws"));
        assert!(!within("/work/wsx", "/work/ws"));
        assert!(within("/x", "/"));
        assert!(strictly_above("/work", "/work/ws"));
        assert!(!strictly_above("/work/ws", "/work/ws"));
        assert_eq!(strip_trailing_glob("/*"), "/");
        assert_eq!(strip_trailing_glob("/home/u/*"), "/home/u");
    }
}
