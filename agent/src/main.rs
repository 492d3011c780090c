//! `pgagent`: see the library's `cli` module for the commands.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(pgagent::main_entry())
}
