//! The command line's definition and the coordinator that runs decoded
//! events through the state machines to the output.
pub mod cli;
pub mod coordinator;
pub mod pipeline;
pub mod worker;
