"""The field lists and code tables of insurance XML tables 13 and 14 (QĐ 130/QĐ-BYT, amended
by QĐ 4750 and QĐ 3176), kept as data so that a new amendment is an edit here, not in the logic.

Sources: ``/work/shared/docs/domain.md`` (section "Referral letter", itself *secondary*: from
summaries of the decisions). Each field is listed in the QĐ 4750 order, under the name QĐ 3176
gives it (the name written on output), with the older names accepted on input as ``aliases``.

Kinds (how the text of an element is read and written):

====================  =======================================================================
``text``              free text; surrounding blanks removed, Unicode NFC
``code``              a code without blanks; ``codes`` (when set) is the closed list allowed
``facility``          a facility code (mã cơ sở KCB), 5 letters or digits
``icd``               one ICD-10 code (``J18.9``)
``icd_list``          ICD-10 codes separated by ``;``
``card_list``         insurance card numbers separated by ``;`` (a card renewed during the stay)
``text_list``         texts separated by ``;`` (several doctors' licence numbers)
``datetime``          ``yyyymmddHHMM`` (``yyyymmdd`` accepted: midnight); written with 12 digits
``date``              ``yyyymmdd`` (``yyyymmddHHMM`` accepted, the time dropped); 8 digits
``date_list``         ``date`` values separated by ``;`` (one per card)
``date_or_datetime``  either; the precision given is kept and written back as given
``birth``             ``yyyymmddHHMM``/``yyyymmdd``/``yyyy``; ``00`` month or day = unknown
====================  =======================================================================

Widths follow the standard: card expiry (GT_THE_DEN) and signing date (NGAY_CT) are days
(8 digits); NGAY_HEN_KL is a day in QĐ 130 but some HIS send a time, which is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_ENVELOPE_BYTES = 20 * 1024 * 1024
"""A GIAMDINHHS envelope larger than this is refused (413) before it is parsed."""
MAX_TABLE_BYTES = 5 * 1024 * 1024
"""A table (decoded NOIDUNGFILE) larger than this is refused (413) before it is decoded."""

TABLE13_ROOT = "CHI_TIEU_GIAYCHUYENTUYEN"
TABLE14_ROOT = "CHI_TIEU_GIAYHEN_KHAMLAI"

FILE_KINDS = frozenset(f"XML{number}" for number in range(1, 16))
"""The LOAIHOSO values of QĐ 130 (tables 1 to 15); any other value is refused."""


@dataclass(frozen=True)
class FieldSpec:
    name: str  # the element name written on output (QĐ 3176)
    attr: str  # the dataclass attribute
    kind: str
    required: bool = False
    aliases: tuple[str, ...] = ()  # older element names accepted on input (QĐ 4750)
    codes: frozenset[str] | None = None  # closed code list for kind "code"
    written: bool = True  # False: dropped by QĐ 3176, read but not written

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


GENDER_CODES = {"1": "male", "2": "female", "3": "unknown"}
"""GIOI_TINH → Patient.gender (QĐ 130: 1 Nam, 2 Nữ, 3 Chưa xác định)."""

REFERRAL_REASON = {  # MA_LYDO_CT (domain.md)
    "1": "Meets the referral rules",
    "2": "The facility cannot provide the care needed",
    "3": "At the patient's request",
}
DISCHARGE_TYPE = {  # MA_LOAI_RV (domain.md)
    "1": "Discharged",
    "2": "Transferred for professional reasons",
    "3": "Absconded",
    "4": "Left on own request",
    "5": "Transferred at the patient's request",
}


def _field(
    name: str,
    kind: str = "text",
    *,
    required: bool = False,
    codes: frozenset[str] | None = None,
    written: bool = True,
) -> FieldSpec:
    """A field whose attribute is its name in lower case and which has no older name."""
    return FieldSpec(name, name.lower(), kind, required=required, codes=codes, written=written)


TABLE13_FIELDS: tuple[FieldSpec, ...] = (
    _field("MA_LK", required=True),
    _field("SO_HOSO", required=True),
    _field("SO_CHUYENTUYEN", required=True),
    _field("GIAY_CHUYEN_TUYEN", required=True),
    _field("MA_CSKCB", "facility"),
    FieldSpec("MA_CSKCB_DI", "ma_noi_di", "facility", aliases=("MA_NOI_DI",)),
    FieldSpec("MA_CSKCB_DEN", "ma_noi_den", "facility", aliases=("MA_NOI_DEN",)),
    _field("HO_TEN", required=True),
    _field("NGAY_SINH", "birth"),
    _field("GIOI_TINH", "code", codes=frozenset(GENDER_CODES)),
    _field("MA_QUOCTICH", "code"),
    _field("MA_DANTOC", "code"),
    _field("MA_NGHE_NGHIEP", "code"),
    _field("DIA_CHI"),
    _field("MA_THE_BHYT", "card_list"),
    _field("GT_THE_DEN", "date_list"),
    _field("NGAY_VAO", "datetime"),
    _field("NGAY_VAO_NOI_TRU", "datetime"),
    _field("NGAY_RA", "datetime"),
    _field("DAU_HIEU_LS", required=True),
    _field("CHAN_DOAN_RV"),
    _field("QT_BENHLY", required=True),
    _field("TOMTAT_KQ"),
    # QĐ 4750 "PP_DIEUTRI" (treatment given) became QĐ 3176 "TINH_TRANG_CT" (condition at
    # transfer) in the same place; "PP_DIEU_TRI" is the spelling table 1 uses, seen in the wild.
    FieldSpec("TINH_TRANG_CT", "tinh_trang_ct", "text", aliases=("PP_DIEUTRI", "PP_DIEU_TRI")),
    _field("MA_BENH_CHINH", "icd"),
    _field("MA_BENH_KT", "icd_list"),
    _field("MA_BENH_YHCT"),
    _field("TEN_DICH_VU", written=False),
    _field("TEN_THUOC", written=False),
    _field("MA_LOAI_RV", "code", codes=frozenset(DISCHARGE_TYPE)),
    _field("MA_LYDO_CT", "code", required=True, codes=frozenset(REFERRAL_REASON)),
    _field("HUONG_DIEU_TRI", required=True),
    _field("PHUONGTIEN_VC", required=True),
    _field("HOTEN_NGUOI_HT"),
    _field("CHUCDANH_NGUOI_HT"),
    _field("MA_BAC_SI", "text_list", required=True),
    _field("MA_TTDV", required=True),
    _field("DU_PHONG"),
)

TABLE14_FIELDS: tuple[FieldSpec, ...] = (
    _field("MA_LK", required=True),
    _field("SO_GIAYHEN_KL", required=True),
    _field("MA_CSKCB", "facility", required=True),
    _field("HO_TEN", required=True),
    _field("NGAY_SINH", "birth"),
    _field("GIOI_TINH", "code", codes=frozenset(GENDER_CODES)),
    _field("DIA_CHI"),
    _field("MA_THE_BHYT", "card_list"),
    _field("GT_THE_DEN", "date_list"),
    _field("NGAY_VAO", "datetime"),
    _field("NGAY_VAO_NOI_TRU", "datetime"),
    _field("NGAY_RA", "datetime"),
    _field("NGAY_HEN_KL", "date_or_datetime", required=True),
    _field("CHAN_DOAN_RV"),
    _field("MA_BENH_CHINH", "icd"),
    _field("MA_BENH_KT", "icd_list"),
    _field("MA_BENH_YHCT"),
    _field("MA_DOITUONG_KCB", "code"),
    _field("MA_BAC_SI", "text_list", required=True),
    _field("MA_TTDV", required=True),
    _field("NGAY_CT", "date", required=True),
    _field("DU_PHONG"),
)
