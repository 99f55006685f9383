//! The cluster: which nodes are alive (`membership`, PostgreSQL heartbeats), which shards
//! each should hold (`ownership`, the fair-share plan), the node supervisor that renews the
//! leases and runs the shards (`node`), and the mesh that routes a command to the owner of
//! its request's shard (`mesh`). Above the actors it runs; below the engine.

pub mod commits;
pub mod membership;
pub mod mesh;
pub mod node;
pub mod ownership;
