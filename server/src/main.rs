//! The `crdt-hub` binary; everything is in [`crdt_hub::entry`].

fn main() -> std::process::ExitCode {
    crdt_hub::entry::main()
}
