//! Development material (in progress)
