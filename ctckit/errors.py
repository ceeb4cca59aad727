"""The one error type ctckit raises for bad input values."""


class CTCInputError(ValueError):
    """An argument of a CTC function has a bad shape or value.

    The message names the argument, the batch index where there is one, what was
    received and what was expected. Wrong *types* (a float tensor of lengths, a
    string for ``blank``) raise :class:`TypeError` instead.
    """
