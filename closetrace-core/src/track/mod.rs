//! Pure state machines: they take decoded events and a clock value and
//! never read the system, so every one is unit-tested without root.
pub mod closes;
pub mod diagnosis;
pub mod errors;
pub mod followed;
pub mod leaks;
pub mod owners;
pub mod timewait;
