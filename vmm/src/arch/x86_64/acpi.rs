//! ACPI tables (not yet generated; the MP table describes the platform).
