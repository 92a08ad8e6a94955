//! The one list of detector formats. Adding a format is one module (implementing
//! [`DetectorFormat`](crate::format::DetectorFormat)) and one line in [`FORMATS`]; the conformance suite then
//! runs over it too. A family of sizes (JUNGFRAU with 1 to 8 modules) registers one format per size, found by
//! [`by_detector`].

use crate::format::Format;
use crate::jungfrau::FORMATS as JF;

/// Every format, the default (K2 IS) first. Names and ids are unique (checked by a test).
pub const FORMATS: &[Format] =
    &[crate::k2::IS, crate::k2::SUMMIT, JF[0], JF[1], JF[2], JF[3], JF[4], JF[5], JF[6], JF[7]];

/// The format with configuration name `name` (ASCII case ignored, as on the command line).
pub fn by_name(name: &str) -> Option<Format> {
    FORMATS.iter().copied().find(|f| f.name().eq_ignore_ascii_case(name))
}

/// The format of family `family` (ASCII case ignored) with `modules` modules (`--detector jungfrau --modules 2`).
pub fn by_detector(family: &str, modules: usize) -> Option<Format> {
    FORMATS.iter().copied().find(|f| f.family().eq_ignore_ascii_case(family) && f.modules() == modules)
}

/// The families, each once, in registry order (for messages).
pub fn families() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for f in FORMATS {
        if !out.contains(&f.family()) {
            out.push(f.family());
        }
    }
    out
}

/// The format with region id `id` (as recorded in the region header).
pub fn by_id(id: u32) -> Option<Format> {
    FORMATS.iter().copied().find(|f| f.id() == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_are_unique_and_stable() {
        for (i, a) in FORMATS.iter().enumerate() {
            assert_ne!(a.id(), 0, "{a}: id 0 means no detector");
            assert_eq!(a.name(), a.name().to_ascii_lowercase());
            for b in &FORMATS[i + 1..] {
                assert!(a.name() != b.name() && a.id() != b.id(), "{a} and {b} collide");
            }
            assert_eq!(by_name(a.name()), Some(*a));
            assert_eq!(by_id(a.id()), Some(*a));
        }
        // The ids and names already recorded in regions and configuration files.
        assert_eq!((by_name("is").map(|f| f.id()), by_name("SUMMIT").map(|f| f.id())), (Some(1), Some(2)));
        assert_eq!(by_name("nope"), None);
        assert_eq!(by_id(0), None);
        assert_eq!(Format::default(), crate::k2::IS);
    }

    #[test]
    fn families_and_module_counts_pick_one_format() {
        for (i, a) in FORMATS.iter().enumerate() {
            assert_eq!(by_detector(a.family(), a.modules()), Some(*a));
            for b in &FORMATS[i + 1..] {
                assert!((a.family(), a.modules()) != (b.family(), b.modules()), "{a} and {b} collide");
            }
        }
        assert_eq!(by_detector("JUNGFRAU", 2).map(|f| (f.name(), f.id())), Some(("jungfrau-2", 18)));
        assert_eq!(by_detector("jungfrau", 9), None);
        assert_eq!(by_detector("summit", 1), Some(crate::k2::SUMMIT));
        assert_eq!(families(), ["is", "summit", "jungfrau"]);
    }

    #[test]
    fn every_format_conforms() {
        for f in FORMATS {
            if let Err(e) = crate::conformance::check(*f) {
                panic!("{f}: {e}");
            }
        }
    }
}
