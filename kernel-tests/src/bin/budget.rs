//! `rush-test-budget OP ARGS...`: consumes one resource, for the budget tests.
//!
//! spin (burns CPU forever; prints `spinning`)
//! hog MB (allocates and touches 1 MiB at a time up to MB MiB, printing `allocated N`
//! after each; prints `done` if it got them all)
//! forks N (starts N children that sleep 60 s; prints `forked K` and, at the first failure,
//! `errno NAME`; then kills the children it made. Exit 0 if all N started, 10 otherwise)

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(0).as_str() {
        "spin" => {
            println!("spinning");
            let _ = std::io::stdout().flush();
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        "hog" => {
            let mb: usize = arg(1).parse().expect("hog MB");
            let mut kept = Vec::new();
            for i in 1..=mb {
                // Touch every page, so the memory is really charged.
                kept.push(vec![i as u8; 1 << 20]);
                println!("allocated {i}");
                let _ = std::io::stdout().flush();
            }
            println!("done");
            std::hint::black_box(&kept);
            ExitCode::SUCCESS
        }
        "forks" => {
            let n: usize = arg(1).parse().expect("forks N");
            let mut children = Vec::new();
            let mut failed = None;
            for _ in 0..n {
                match std::process::Command::new("sleep").arg("60").spawn() {
                    Ok(c) => children.push(c),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            println!("forked {}", children.len());
            if let Some(e) = &failed {
                match e.raw_os_error() {
                    Some(n) => println!("errno {:?}", nix::errno::Errno::from_raw(n)),
                    None => println!("error {e}"),
                }
            }
            for c in &mut children {
                let _ = c.kill();
                let _ = c.wait();
            }
            if failed.is_some() { ExitCode::from(10) } else { ExitCode::SUCCESS }
        }
        other => {
            eprintln!("rush-test-budget: unknown operation {other:?} (spin | hog MB | forks N)");
            ExitCode::from(2)
        }
    }
}
