//! The `crdt-hub` program, built in this package so that its tests can run
//! it as a process (cargo gives a test the path of its own package's
//! binaries only). One line, the same entry point as `crdt-hub`.

fn main() -> std::process::ExitCode {
    crdt_hub::entry::main()
}
