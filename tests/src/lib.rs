//! Test rig helpers.
