//! The per-store resource limiter: caps the SUM of all linear memories and
//! table elements of one plugin instance, plus instance/table/memory counts.

use wasmtime::ResourceLimiter;

/// Limits for one store, and a record of whether a limit was hit (so a
/// failed call can be reported as `RESOURCE_EXHAUSTED` instead of a trap).
#[derive(Debug)]
pub struct Limiter {
    memory_limit: usize,
    memory_used: usize,
    table_elements_limit: usize,
    table_elements_used: usize,
    /// Set when a memory or table grow was refused.
    pub exhausted: bool,
}

/// Table elements allowed per store (all tables together).
pub const TABLE_ELEMENTS_LIMIT: usize = 100_000;
/// Core instances, tables and memories allowed per store.
const COUNT_LIMIT: usize = 16;

impl Limiter {
    /// A limiter allowing `memory_limit` bytes of linear memory in total.
    pub fn new(memory_limit: usize) -> Self {
        Self {
            memory_limit,
            memory_used: 0,
            table_elements_limit: TABLE_ELEMENTS_LIMIT,
            table_elements_used: 0,
            exhausted: false,
        }
    }
}

impl Limiter {
    /// Bytes of linear memory the store holds now (memories never shrink,
    /// so this is also its peak).
    pub fn memory_used(&self) -> usize {
        self.memory_used
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory_used - current.min(self.memory_used) + desired;
        if total > self.memory_limit {
            self.exhausted = true;
            return Ok(false);
        }
        self.memory_used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.table_elements_used - current.min(self.table_elements_used) + desired;
        if total > self.table_elements_limit {
            self.exhausted = true;
            return Ok(false);
        }
        self.table_elements_used = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        COUNT_LIMIT
    }

    fn tables(&self) -> usize {
        COUNT_LIMIT
    }

    fn memories(&self) -> usize {
        COUNT_LIMIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_capped_as_a_sum_over_memories() {
        let mut l = Limiter::new(100);
        assert!(l.memory_growing(0, 60, None).unwrap());
        // A second memory may only take what is left.
        assert!(!l.memory_growing(0, 50, None).unwrap());
        assert!(l.exhausted);
        assert!(l.memory_growing(0, 40, None).unwrap());
        // Growing the first memory counts only the difference.
        assert!(!l.memory_growing(60, 61, None).unwrap());
    }

    #[test]
    fn tables_are_capped() {
        let mut l = Limiter::new(1 << 20);
        assert!(l.table_growing(0, 10, None).unwrap());
        assert!(!l.table_growing(10, TABLE_ELEMENTS_LIMIT + 1, None).unwrap());
    }
}
