"""``stanchion report``: read access logs, show who sends what and when,
replay them through a :class:`~stanchion.Limiter` and suggest limits."""
