//! meter-reader (skeleton).
