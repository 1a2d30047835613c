pub mod activations;
pub mod bench;
pub mod generate;
pub mod tokenize;
