//! One table per stage of its counters: the region's struct and the names that `status`, `/metrics` and the
//! sidecar report are generated from the same list, so a counter that is counted is reported (before,
//! `receiver.batches` was counted and documented but never reported).

/// Defines a `#[repr(C, align(64))]` struct of `AtomicU64` counters (plus `extra` fields after them, verbatim)
/// and, from the same list, `NAMES` (`"<stage>.<field>"`) and `each`, which visits every counter with its name.
macro_rules! counter_set {
    (
        $(#[$doc:meta])* $name:ident, $stage:literal {
            $($(#[$fdoc:meta])* $field:ident,)*
        }
        $(extra { $($extra:tt)* })?
    ) => {
        $(#[$doc])*
        #[repr(C, align(64))]
        pub struct $name {
            $($(#[$fdoc])* pub $field: ::std::sync::atomic::AtomicU64,)*
            $($($extra)*)?
        }

        impl $name {
            /// The counters' names, `"<stage>.<field>"`, in field order.
            pub const NAMES: &'static [&'static str] = &[$(concat!($stage, ".", stringify!($field))),*];

            /// Calls `f` with every counter's name and value (a relaxed load: counters are statistics).
            pub fn each(&self, mut f: impl FnMut(&'static str, u64)) {
                $(f(concat!($stage, ".", stringify!($field)), self.$field.load(::std::sync::atomic::Ordering::Relaxed));)*
            }
        }
    };
}

pub(crate) use counter_set;

#[cfg(test)]
mod tests {
    use crate::pipeline::{AssemblerCounters, ReceiverCounters, WriterCounters};

    #[test]
    fn every_counter_is_named_and_visited() {
        // SAFETY: all-zero bytes are valid counters (atomics and an array of them).
        let rx: ReceiverCounters = unsafe { std::mem::zeroed() };
        rx.batches.store(7, std::sync::atomic::Ordering::Relaxed);
        let mut seen = Vec::new();
        rx.each(|n, v| seen.push((n, v)));
        assert_eq!(seen.iter().map(|(n, _)| *n).collect::<Vec<_>>(), ReceiverCounters::NAMES);
        assert!(seen.contains(&("receiver.batches", 7)), "{seen:?}");
        assert_eq!(ReceiverCounters::NAMES.len(), 6);
        assert_eq!(AssemblerCounters::NAMES.len(), 7);
        assert_eq!(
            WriterCounters::NAMES,
            [
                "writer.frames",
                "writer.bytes",
                "writer.errors",
                "writer.done",
                "writer.failed",
                "writer.compress_cpu_ns",
                "writer.compressed_bytes"
            ]
        );
    }
}
