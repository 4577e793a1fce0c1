"""What the tests share: a fake upstream, the in-process harness, real
processes and private servers, the fault runner, and builders of test data."""
