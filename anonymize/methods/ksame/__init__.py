"""k-Same (Newton, Sweeney and Malin 2005): every face replaced by the average of a group of at least k."""
