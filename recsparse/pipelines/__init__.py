"""recsparse.pipelines."""
