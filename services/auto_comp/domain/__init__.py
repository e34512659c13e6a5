"""Pure auto-compensation logic: strategies, their loader, the decision engine, the backtest. No I/O."""
