//! What reads the running system: sock_diag, fd tables, /proc, cgroups,
//! port sysctls and privileges. Blocking I/O lives here and only here; the
//! coordinator reaches it through traits, from a worker thread.
pub mod cgroups;
pub mod filters;
pub mod privileges;
pub mod procs;
pub mod sockets;
