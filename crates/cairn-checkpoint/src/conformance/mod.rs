//! The conformance kit: one suite every backend runs. (Being written.)
