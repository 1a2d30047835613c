pub mod activations;
pub mod bench;
pub mod dict;
pub mod generate;
pub mod tokenize;
pub mod train;
