"""Hospital network and closed-loop referrals."""
