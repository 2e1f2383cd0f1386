"""Storage behind one narrow interface (store.base.Store)."""
