mod common;
mod gradcheck;
