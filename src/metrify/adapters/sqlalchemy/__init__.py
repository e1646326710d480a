"""SQLAlchemy adapters: the stream store on SQLite (embedded) and PostgreSQL (production)."""

from metrify.adapters.sqlalchemy.engine import create_engine_for, mask_url
from metrify.adapters.sqlalchemy.queries import SqlAlchemyOutcomeQueries
from metrify.adapters.sqlalchemy.unit_of_work import SqlAlchemyStreamUnitOfWork

__all__ = ["SqlAlchemyOutcomeQueries", "SqlAlchemyStreamUnitOfWork", "create_engine_for", "mask_url"]
