//! The shell's own command line, read the way bash reads it: combined flags (`-ec`),
//! `+o`/`-o NAME`, `-O`/`+O` shopt names, `-c` taking the first operand as the command,
//! `--` and `-` ending the options. Hand-written because that grammar (`+` options, a
//! flag whose value is an operand, not the next argument) is not clap's, and it keeps
//! `rush -c` free of building a parser.

use std::path::PathBuf;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ShellArgs {
    /// `-c`: the first operand is the command, the next ones `$0`, `$1`, ...
    pub command: Option<String>,
    /// `-s`: commands from standard input even when operands are given.
    pub stdin: bool,
    /// `-i`: interactive even when standard input is not a terminal.
    pub interactive: bool,
    pub login: bool,
    /// Single-letter `set` flags (`-e`, `+x`): the letter and on/off.
    pub flags: Vec<(char, bool)>,
    /// `-o NAME` / `+o NAME`.
    pub set_options: Vec<(String, bool)>,
    /// `-O NAME` / `+O NAME`.
    pub shopt_options: Vec<(String, bool)>,
    pub no_rc: bool,
    pub no_profile: bool,
    pub rc_file: Option<PathBuf>,
    pub posix: bool,
    pub no_editing: bool,
    /// The script and its arguments, or `$0` and the positional parameters with -c/-s.
    pub operands: Vec<String>,
}

/// Flags that only switch a `set` option (bash's `-abefhkmnptuvxBCHP`, and `-T`/`-E`).
const SET_FLAGS: &str = "abefhkmnptuvxBCHPTE";

/// Parses the arguments after the program name. Err: the message bash would give, e.g.
/// `-o: option requires an argument`.
pub fn parse(args: &[String]) -> Result<ShellArgs, String> {
    let mut a = ShellArgs::default();
    let mut i = 0;
    let mut wants_command = false;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        match arg.as_str() {
            "--" | "-" => break,
            "--norc" => a.no_rc = true,
            "--noprofile" => a.no_profile = true,
            "--login" => a.login = true,
            "--posix" => a.posix = true,
            "--noediting" => a.no_editing = true,
            "--rcfile" | "--init-file" => {
                let f = args.get(i).ok_or_else(|| format!("{arg}: option requires an argument"))?;
                a.rc_file = Some(PathBuf::from(f));
                i += 1;
            }
            long if long.starts_with("--") => return Err(format!("{long}: invalid option")),
            short if short.len() > 1 && (short.starts_with('-') || short.starts_with('+')) => {
                let on = short.starts_with('-');
                for c in short[1..].chars() {
                    match c {
                        'c' if on => wants_command = true,
                        's' if on => a.stdin = true,
                        'i' if on => a.interactive = true,
                        'l' if on => a.login = true,
                        'o' | 'O' => {
                            let name = args
                                .get(i)
                                .ok_or_else(|| format!("-{c}: option requires an argument"))?
                                .clone();
                            i += 1;
                            if c == 'o' {
                                a.set_options.push((name, on))
                            } else {
                                a.shopt_options.push((name, on))
                            }
                        }
                        f if SET_FLAGS.contains(f) => a.flags.push((f, on)),
                        other => {
                            let sign = if on { '-' } else { '+' };
                            return Err(format!("{sign}{other}: invalid option"));
                        }
                    }
                }
            }
            _ => {
                i -= 1;
                break;
            }
        }
    }
    a.operands = args[i..].to_vec();
    if wants_command {
        if a.operands.is_empty() {
            return Err("-c: option requires an argument".into());
        }
        a.command = Some(a.operands.remove(0));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<ShellArgs, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn dash_c_takes_the_first_operand_and_the_rest_are_dollar_zero_onwards() {
        let a = p(&["-c", "echo $0 $1", "me", "one"]).unwrap();
        assert_eq!(a.command.as_deref(), Some("echo $0 $1"));
        assert_eq!(a.operands, ["me", "one"]);
        let a = p(&["-ec", "false"]).unwrap();
        assert_eq!(a.command.as_deref(), Some("false"));
        assert_eq!(a.flags, [('e', true)]);
        // bash: options may follow -c before the command operand.
        let a = p(&["-c", "-x", "true"]).unwrap();
        assert_eq!((a.command.as_deref(), a.flags.as_slice()), (Some("true"), &[('x', true)][..]));
    }

    #[test]
    fn plus_and_minus_o_and_shopt() {
        let a = p(&["-o", "pipefail", "+o", "posix", "-O", "extglob", "+O", "nullglob", "s.sh"]).unwrap();
        assert_eq!(a.set_options, [("pipefail".to_string(), true), ("posix".to_string(), false)]);
        assert_eq!(a.shopt_options, [("extglob".to_string(), true), ("nullglob".to_string(), false)]);
        assert_eq!(a.operands, ["s.sh"]);
    }

    #[test]
    fn operands_end_the_options() {
        let a = p(&["script.sh", "-c", "x"]).unwrap();
        assert_eq!(a.command, None);
        assert_eq!(a.operands, ["script.sh", "-c", "x"]);
        let a = p(&["--", "-weird-name.sh"]).unwrap();
        assert_eq!(a.operands, ["-weird-name.sh"]);
        let a = p(&["-s", "a", "b"]).unwrap();
        assert!(a.stdin);
        assert_eq!(a.operands, ["a", "b"]);
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(p(&["-c"]).unwrap_err(), "-c: option requires an argument");
        assert_eq!(p(&["-o"]).unwrap_err(), "-o: option requires an argument");
        assert_eq!(p(&["-q"]).unwrap_err(), "-q: invalid option");
        assert_eq!(p(&["--frob"]).unwrap_err(), "--frob: invalid option");
        assert_eq!(p(&["--rcfile"]).unwrap_err(), "--rcfile: option requires an argument");
    }
}
