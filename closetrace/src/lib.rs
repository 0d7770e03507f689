//! closetrace as a library: the kernel loader, the decoding boundary, the
//! state machines, the output sinks and the report reader. The `closetrace`
//! binary (main.rs) is the command-line edge over them; the fuzz targets
//! (`fuzz/`) drive the decoder, the report reader and argument parsing.
pub mod cgroups;
pub mod cli;
pub mod clock;
pub mod closes;
pub mod decode;
pub mod filters;
pub mod leaks;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod offsets;
pub mod owners;
pub mod pipeline;
pub mod ports;
pub mod pressure;
pub mod privileges;
pub mod procs;
pub mod records;
pub mod report;
pub mod sink;
pub mod snapshot;
pub mod summary;
pub mod timewait;
