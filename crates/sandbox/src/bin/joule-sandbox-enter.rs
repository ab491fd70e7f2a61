//! The inner-walls helper (`joule_sandbox::enter`): the first program inside a tool's box.

fn main() -> std::process::ExitCode {
    joule_sandbox::enter::main(std::env::args_os().skip(1).collect())
}
