//! jitsudo's load generator and chaos harness: they drive real `jitsudod` processes through
//! the public API only, like any other client.
