"""imaging: the DICOMweb index of studies, series and instances held in the object store

``dicom_study`` (the QIDO-RS matching keys, counts, its ImagingStudy), ``dicom_series``
(the object of its precomputed WADO-RS metadata) and ``dicom_instance`` (the object, its
SHA-256, where its native pixel data lies, its metadata); ``dicom_ae`` the calling AE titles
the C-STORE receiver accepts, each with its hospital.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def _text(length: int) -> sa.types.TypeEngine:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        "dicom_study",
        sa.Column("study_uid", _text(64), nullable=False),
        sa.Column("imaging_study_id", _text(64), nullable=False),
        sa.Column("patient_id", _text(64), nullable=True),
        sa.Column("patient_name", _text(324), nullable=True),
        sa.Column("patient_name_key", _text(324), nullable=True),
        sa.Column("patient_birth_date", _text(8), nullable=True),
        sa.Column("patient_sex", _text(16), nullable=True),
        sa.Column("study_date", _text(8), nullable=True),
        sa.Column("study_time", _text(16), nullable=True),
        sa.Column("accession_number", _text(16), nullable=True),
        sa.Column("study_id", _text(16), nullable=True),
        sa.Column("study_description", _text(64), nullable=True),
        sa.Column("referring_physician", _text(324), nullable=True),
        sa.Column("modalities", _text(128), nullable=False),
        sa.Column("series_count", sa.Integer(), nullable=False),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("study_uid"),
        sa.UniqueConstraint("imaging_study_id"),
    )
    with op.batch_alter_table("dicom_study", schema=None) as batch_op:
        batch_op.create_index("ix_dicom_study_accession_number", ["accession_number"], unique=False)
        batch_op.create_index("ix_dicom_study_patient_id", ["patient_id"], unique=False)
        batch_op.create_index("ix_dicom_study_study_date", ["study_date"], unique=False)
    op.create_table(
        "dicom_series",
        sa.Column("series_uid", _text(64), nullable=False),
        sa.Column("study_uid", _text(64), nullable=False),
        sa.Column("modality", _text(16), nullable=True),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("series_description", _text(64), nullable=True),
        sa.Column("body_part", _text(16), nullable=True),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("metadata_key", _text(1024), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("series_uid"),
    )
    with op.batch_alter_table("dicom_series", schema=None) as batch_op:
        batch_op.create_index("ix_dicom_series_study_uid", ["study_uid"], unique=False)
    op.create_table(
        "dicom_instance",
        sa.Column("sop_uid", _text(64), nullable=False),
        sa.Column("series_uid", _text(64), nullable=False),
        sa.Column("study_uid", _text(64), nullable=False),
        sa.Column("sop_class_uid", _text(64), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("transfer_syntax", _text(64), nullable=False),
        sa.Column("object_key", _text(1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", _text(64), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("columns", sa.Integer(), nullable=True),
        sa.Column("frame_bytes", sa.BigInteger(), nullable=True),
        sa.Column("pixel_offset", sa.BigInteger(), nullable=True),
        sa.Column("metadata_json", sa.Text(), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sop_uid"),
    )
    with op.batch_alter_table("dicom_instance", schema=None) as batch_op:
        batch_op.create_index("ix_dicom_instance_series_uid", ["series_uid"], unique=False)
        batch_op.create_index("ix_dicom_instance_study_uid", ["study_uid"], unique=False)

    op.create_table(
        "dicom_ae",
        sa.Column("ae_title", _text(16), nullable=False),
        sa.Column("organization", _text(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("ae_title"),
    )


def downgrade() -> None:
    op.drop_table("dicom_ae")
    with op.batch_alter_table("dicom_instance", schema=None) as batch_op:
        batch_op.drop_index("ix_dicom_instance_study_uid")
        batch_op.drop_index("ix_dicom_instance_series_uid")
    op.drop_table("dicom_instance")
    with op.batch_alter_table("dicom_series", schema=None) as batch_op:
        batch_op.drop_index("ix_dicom_series_study_uid")
    op.drop_table("dicom_series")
    with op.batch_alter_table("dicom_study", schema=None) as batch_op:
        batch_op.drop_index("ix_dicom_study_study_date")
        batch_op.drop_index("ix_dicom_study_patient_id")
        batch_op.drop_index("ix_dicom_study_accession_number")
    op.drop_table("dicom_study")
