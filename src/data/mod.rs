//! Data: corpora, vocabularies and the batches cut from them.

pub mod corpus;
pub mod lm;
pub mod vocab;
