//! data-api (skeleton).
