"""Coverage-guided fuzzing (atheris) of the protocol subpackage's decoders.

Every input is fed, as a byte stream in arbitrary pieces, through PDU framing, PDV
parsing, A-ASSOCIATE-RQ/AC/RJ and A-ABORT decoding, command-set decoding and the Study Instance UID scan
(in each transfer syntax family). A decoder may refuse an input only with its own
documented exceptions (ProtocolError, CommandError, HeaderError); anything else is a
crash, and atheris stops with the input that caused it.

    .venv/bin/python -m bench.fuzz_decoders -max_total_time=60      # what make chaos runs
    .venv/bin/python -m bench.fuzz_decoders crash-<sha>              # replay one input
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from routing.dicom import commands, negotiation, pdu, scan

SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    step, body = data[0] + 1, data[1:]
    # Framing, in pieces of ``step`` bytes.
    buffer = pdu.PduBuffer(max_length=1 << 16)
    try:
        for start in range(0, len(body), step):
            buffer.feed(body[start:start + step])
            while (got := buffer.next()) is not None:
                if got.type == pdu.P_DATA_TF:
                    for item in pdu.pdvs(got):
                        if item.is_command:
                            try:
                                commands.decode(item.data)
                            except commands.CommandError:
                                pass
                elif got.type == pdu.A_ASSOCIATE_RQ:
                    rq = negotiation.decode_associate_rq(got.raw)
                    negotiation.accept(rq, ae_title="SYNTHIQ", max_pdu=16384)
                elif got.type == pdu.A_ASSOCIATE_AC:
                    negotiation.decode_associate_ac(got.raw)
                elif got.type == pdu.A_ASSOCIATE_RJ:
                    negotiation.rejection_text(got.raw)
                elif got.type == pdu.A_ABORT:
                    pdu.abort_meaning(*pdu.abort_fields(got))
    except pdu.ProtocolError:
        pass
    # The scan, in each encoding family.
    scanner = scan.HeaderScanner(SYNTAXES[data[0] % len(SYNTAXES)])
    try:
        for start in range(0, len(body), step):
            if scanner.feed(body[start:start + step], last=start + step >= len(body)) is not None:
                break
        else:
            scanner.feed(b"", last=True)
    except scan.HeaderError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
