//! Pure state machines: they take decoded events and a clock value and
//! never read the system, so every one is unit-tested without root.
pub mod closes;
pub mod diagnosis;
pub mod errors;
pub mod followed;
pub mod leaks;
pub mod owners;
pub mod timewait;

/// The tables fed once per event, keyed by socket cookies (the kernel's
/// counter) and tuples: a fast seeded hasher, not SipHash, which alone was
/// 4-6 % of closetrace's CPU under churn.
pub type FastHashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type FastHashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
