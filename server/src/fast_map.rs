//! The hash map of hot paths: per-message and per-key state of the
//! scheduler, per-lane tallies of a commit, per-key metric series. These
//! maps are hit several times per delivery, and SipHash (std's default)
//! showed up in profiles; foldhash is several times faster and still
//! randomly seeded per map, so fairness keys chosen by clients cannot
//! predictably collide.

pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;
