//! What closetrace writes: the JSON-lines records (read back by `report`),
//! the hand-written lines of the per-event records,
//! the text view, the sink that writes both, the summary, the Prometheus
//! metrics and the offline report.
pub mod diagnosis;
pub mod lines;
pub mod metrics;
pub mod records;
pub mod report;
pub mod sink;
pub mod summary;
pub mod text;
pub mod verdict;
