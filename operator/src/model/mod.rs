//! The PortRange API and the pure logic over it.
