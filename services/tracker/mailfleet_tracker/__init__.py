"""mailfleet tracker."""
